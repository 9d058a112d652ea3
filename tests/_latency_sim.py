"""The simulated machine of the latency self-tests (deterministic clocks, no real timing) lives in
harness/latency/simulated.py, so that ``zooconform sensitivity`` judges on the same clocks."""
from harness.latency.simulated import SimulatedMachine

__all__ = ["SimulatedMachine"]
