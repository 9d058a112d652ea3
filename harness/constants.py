"""Constants shared across the harness, and the one parser of ``--shard I/N``.

One home for what several modules need to agree on: the classifier's number of classes, the
artifact precisions the suites build and time, and the shard syntax that pytest's ``--shard``,
``zooconform run --shard`` and the merged report all read.
"""
from __future__ import annotations

NUM_CLASSES = 1000  # ImageNet-1k logits
PRECISIONS = ("fp32", "int8")  # the artifacts the suites build and time on the CPU


# ``zooconform run -j`` starts the latency phase's pytest early; it waits before its first test
# until this file exists (harness/commands/run.py open_gate, harness/plugin.py wait_for_gate)
START_GATE_ENV = "ZOOCONFORM_START_GATE"


def parse_shard(value: object) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``1 <= I <= N``; ValueError naming the option otherwise."""
    try:
        i, n = (int(x) for x in str(value).split("/"))
    except ValueError:
        raise ValueError(f"--shard {value!r}: expected I/N, e.g. --shard 2/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"--shard {value!r}: I must be between 1 and N (N >= 1)")
    return i, n
