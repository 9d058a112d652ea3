"""The harness's own tests run nested pytest sessions in-process (pytester). pytester snapshots
``sys.modules`` and drops every module first imported inside a nested run; onnx's and ONNX
Runtime's C extensions cannot be imported a second time in one process (onnx aborts on a
duplicate nanobind enum, or its checker loses ``CheckerContext``). Importing them here, once,
before any nested run, keeps them loaded for the whole session."""
import os
from pathlib import Path

import onnx  # noqa: F401
import onnxruntime  # noqa: F401

# Every nested run here gets a fresh artifact cache of its own (tmp_path); the seeded references
# (BN recalibration: 10-60 s each) and what is built from them (the ONNX export, the int8 file
# and its calibration, float64 floors, logits) are the same in all of them, so they are built
# once per session and copied from this shared folder (harness/cache.py; xdist workers and the
# subprocess runs inherit it). Every key names what the entry is made of (file digests, images,
# versions), so a planted defect is never served a clean entry. A test about building unsets it.
os.environ.setdefault("ZOOCONFORM_SHARED_CACHE",
                      str(Path(__file__).resolve().parent.parent / ".zooconform-cache" / "tests-shared"))
