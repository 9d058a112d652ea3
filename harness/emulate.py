"""Run ONNX Runtime as another host class would: under qemu-user with an emulated CPU model.

ORT picks its int8 kernels by the CPUID it sees. ``qemu-x86_64 -cpu Haswell`` (Debian's
``qemu-user``) shows AVX2 and FMA, no AVX-512 and no VNNI, so ORT runs the saturating U8S8
path (VPMADDUBSW) of AVX2-only hosts (README.md, "Hosts") on any x86-64 machine. It is
slow (measured 150x for the kernels, 330x for a QDQ float simulation: hrnet_w18_small_v1 on 48
images took 47 s and 465 s), so it suits small models and a few images: the self-tests of the
kernel check (tests/test_quant_hosts.py), or a look at how one file fares on a host you do
not have.

Measured 2026-12-01 (x86-avx512-vnni host, hrnet_w18_small_v1 MinMax QDQ, 48 embedded images):
the QDQ float simulation is bit-identical natively and under emulated Haswell (max |diff| 0),
while the kernels depart from it by 3.5x the file's quantization error under Haswell (0.14x
natively).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .host import CpuFacts

# the CPU models this module knows the host class of (what ORT's kernel dispatch sees)
CPU_MODELS = {
    "Haswell": CpuFacts("qemu Haswell (emulated)", 2, "x86_64", frozenset({"avx", "avx2", "fma", "sse4_2"}), "qemu"),
}

_RUNNER = r'''
import sys, numpy as np, onnxruntime as ort
path, opt, xin, out, threads = sys.argv[1:6]
so = ort.SessionOptions()
so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                               "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[opt]
so.intra_op_num_threads = int(threads); so.inter_op_num_threads = 1; so.log_severity_level = 3
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
x = np.load(xin); name = s.get_inputs()[0].name
np.save(out, np.concatenate([s.run(None, {name: x[i:i + 8]})[0] for i in range(0, len(x), 8)]))
'''


def qemu() -> str | None:
    """The qemu-user binary for this machine's architecture, or None (not installed / not x86-64)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return shutil.which("qemu-x86_64")


def emulated_runner(cpu_model: str = "Haswell", threads: int = 2, timeout_s: float = 900):
    """A ``run_int8(path, optimization, x) -> logits`` (the shape harness/quant/checks.py takes)
    that runs ONNX Runtime under ``qemu-x86_64 -cpu <cpu_model>``."""
    binary = qemu()
    if binary is None:
        raise RuntimeError("qemu-x86_64 not found (Debian: apt-get install qemu-user) or not an x86-64 machine")
    python = os.path.realpath(sys.executable)  # the interpreter itself: qemu runs a binary, not a venv shim
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site + [os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}

    def run(path, optimization: str, x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="zc-emu-") as tmp:
            xin, out = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
            np.save(xin, np.ascontiguousarray(x, dtype=np.float32))
            proc = subprocess.run([binary, "-cpu", cpu_model, python, "-c", _RUNNER, str(path), optimization, str(xin),
                                   str(out), str(threads)], env=env, capture_output=True, text=True, timeout=timeout_s)
            if proc.returncode != 0 or not out.is_file():
                tail = "\n".join(line for line in proc.stderr.splitlines() if "warning" not in line)[-400:]
                raise RuntimeError(f"ONNX Runtime under qemu -cpu {cpu_model} failed (exit {proc.returncode}): {tail}")
            return np.load(out)

    return run
