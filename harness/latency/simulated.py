"""A simulated machine: deterministic clocks, no real timing (the latency self-tests and
``zooconform sensitivity`` judge latency verdicts on it).

Each call of the model needs ``work_s`` seconds on each of ``threads`` threads. A busy
machine gives our threads only ``1 - busy`` of a CPU: the call's wall time grows to
``work_s / (1 - busy)``, the extra is run delay (runnable, waiting for a CPU), and the
process CPU time stays ``work_s x threads``. ``neighbours`` is the share of all CPUs other
processes keep busy (what /proc/stat shows). ``phases`` switches the load over time:
a list of (calls, busy, neighbours) applied in order, the last one for ever. ``noise``: a
seeded random spread on top (each call's work x exp(noise x N(0, 1)), ``seed``), for the
statistical self-tests of the sequential stopping rule; 0 keeps the machine deterministic.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable

from .timing import Clocks


class SimulatedMachine:
    def __init__(self, work_s: float = 0.010, threads: int = 2, busy: float = 0.0, neighbours: float = 0.0,
                 ncpu: int = 2, jitter: float = 0.0, phases: list[tuple[int, float, float]] | None = None,
                 schedstat: bool = True, noise: float = 0.0, seed: int = 0) -> None:
        self.work_s, self.threads, self.ncpu, self.jitter = work_s, threads, ncpu, jitter
        self.noise, self.rng = noise, random.Random(seed)
        self.phases = phases or [(10 ** 9, busy, neighbours)]
        self.schedstat = schedstat
        self.t = self.cpu = self.delay = self.system = 0.0
        self.calls = 0

    def _load(self) -> tuple[float, float]:
        n = self.calls
        for count, busy, neighbours in self.phases:
            if n < count:
                return busy, neighbours
            n -= count
        return self.phases[-1][1], self.phases[-1][2]

    def model(self, work_scale: float = 1.0) -> Callable[[], None]:
        """A callable that costs ``work_s x work_scale`` on this machine."""
        def call() -> None:
            busy, neighbours = self._load()
            # deterministic jitter: a fixed saw-tooth, so medians and spreads are exact
            work = self.work_s * work_scale * (1 + self.jitter * ((self.calls % 5) - 2) / 2)
            if self.noise:
                work *= math.exp(self.noise * self.rng.gauss(0.0, 1.0))
            wall = work / (1 - busy)
            self.t += wall
            self.cpu += work * self.threads
            self.delay += (wall - work) * self.threads
            self.system += work * self.threads + neighbours * self.ncpu * wall
            self.calls += 1
        return call

    def sleep(self, s: float) -> None:
        _, neighbours = self._load()
        self.t += s
        self.system += neighbours * self.ncpu * s

    def _run_delay(self) -> float | None:
        return self.delay if self.schedstat else None

    @property
    def clocks(self) -> Clocks:
        return Clocks(wall=lambda: self.t, cpu=lambda: self.cpu, run_delay=self._run_delay,
                      system_busy=lambda: (self.system, self.ncpu), sleep=self.sleep)
