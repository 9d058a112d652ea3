"""Which host this run is on: the machine fingerprint every report carries.

The project's machines are all "2-vCPU AMD EPYC", but the CPU under them differs between
sessions and CI (README.md, "Hosts"): AVX-512 with VNNI on one, AVX2 only on
another, fp32 peaks from 126 to 545 GFLOP/s. What changes ONNX Runtime's kernels is the ISA,
not the model name, so the fingerprint reads the CPU's feature flags (``/proc/cpuinfo``, else
py-cpuinfo) and derives a short **host class** from them:

========================  ==================================================================
``x86-amx``               AMX int8 tiles (Sapphire Rapids and later)
``x86-avx512-vnni``       AVX-512 with VNNI: MLAS's U8S8 int8 GEMM accumulates in int32
``x86-avx-vnni``          AVX-VNNI without AVX-512 (Alder Lake and later client cores)
``x86-avx512``            AVX-512 without VNNI: U8S8 goes through VPMADDUBSW (int16 pairs)
``x86-avx2``              AVX2 only: U8S8 goes through VPMADDUBSW (int16 pairs)
``x86``                   older x86
``arm-i8mm``, ``arm-dotprod``, ``arm``   AArch64 by its int8 dot-product extensions
========================  ==================================================================

Without VNNI (or AMX), ORT's U8S8 kernels add pairs of uint8 x int8 products in int16 with
saturation (VPMADDUBSW): activations near 255 times weights near 127 overflow. ORT's
quantization docs recommend ``reduce_range`` (7-bit weights) on such CPUs.
:func:`u8s8_may_saturate` says whether this host is one of them.

The measured peaks (an fp32 MatMul and a uint8 x int8 MatMulInteger, both in ORT's CPU EP)
say how fast this particular host is: two hosts of one class can differ 1.5x (126 vs 198
GFLOP/s measured on AVX2 vs AVX-512 hosts of the same VM kind).
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# flags that change which kernels ORT (MLAS) and OpenVINO pick, as /proc/cpuinfo spells them
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")
# py-cpuinfo spells a few of them differently
_CPUINFO_ALIASES = {"avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "dotprod": "asimddp"}


@dataclass(frozen=True)
class CpuFacts:
    model: str
    cores: int | None
    arch: str                 # x86_64, aarch64, ...
    flags: frozenset[str]     # every flag the OS reports (lower case)
    source: str               # "/proc/cpuinfo" | "py-cpuinfo" | "platform"

    @property
    def isa(self) -> list[str]:
        """The kernel-relevant flags this CPU has, in a fixed order."""
        known = ARM_FLAGS if self.is_arm else X86_FLAGS
        return [f for f in known if f in self.flags]

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ("aarch64", "arm64") or self.arch.lower().startswith("arm")

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i686", "i386", "x86")


def _parse_proc_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_facts(proc_cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFacts:
    """CPU model, cores, architecture and feature flags of this machine."""
    arch = platform.machine() or "unknown"
    try:
        model, flags = _parse_proc_cpuinfo(proc_cpuinfo.read_text())
        if flags:
            return CpuFacts(model or platform.processor(), os.cpu_count(), arch, frozenset(f.lower() for f in flags),
                            str(proc_cpuinfo))
    except OSError:
        pass
    try:  # macOS, Windows: py-cpuinfo knows how to ask them
        import cpuinfo

        info = cpuinfo.get_cpu_info()
        flags = {_CPUINFO_ALIASES.get(f.lower(), f.lower()) for f in info.get("flags", [])}
        return CpuFacts(info.get("brand_raw") or platform.processor(), os.cpu_count(), arch, frozenset(flags), "py-cpuinfo")
    except Exception:  # py-cpuinfo missing or failing: no flags, the class says "unknown"
        return CpuFacts(platform.processor(), os.cpu_count(), arch, frozenset(), "platform")


def host_class(cpu: CpuFacts) -> str:
    """The short class name of the table in the module docstring."""
    f = cpu.flags
    if cpu.is_x86:
        if not f:
            return "x86-unknown"
        if "amx_int8" in f:
            return "x86-amx"
        if "avx512_vnni" in f:
            return "x86-avx512-vnni"
        if "avx_vnni" in f:
            return "x86-avx-vnni"
        if "avx512f" in f:
            return "x86-avx512"
        if "avx2" in f:
            return "x86-avx2"
        return "x86"
    if cpu.is_arm:
        if not f:
            return "arm-unknown"
        if "i8mm" in f:
            return "arm-i8mm"
        if "asimddp" in f:
            return "arm-dotprod"
        return "arm"
    return f"{cpu.arch.lower()}-unknown"


def u8s8_may_saturate(cpu: CpuFacts) -> bool:
    """True where ORT's uint8 x int8 GEMM adds product pairs in saturating int16 (x86 without
    VNNI or AMX); such hosts need int8 files quantized with reduce_range (or U8U8)."""
    return cpu.is_x86 and bool(cpu.flags) and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu.flags)


@dataclass(frozen=True)
class Fingerprint:
    """What every report says about the host: see :func:`fingerprint`."""

    cpu: str
    cores: int | None
    arch: str
    isa: list[str]
    host_class: str
    u8s8_saturates: bool
    fp32_peak_gflops: float | None = None
    int8_peak_gops: float | None = None
    peak_threads: int | None = None
    peaks_quiet: bool | None = None
    flags_source: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        """``x86-avx2 · AMD EPYC, 2 cores · avx2 fma · fp32 126 GFLOP/s · int8 250 GOP/s``"""
        parts = [self.host_class, f"{self.cpu or '?'}, {self.cores} cores", " ".join(self.isa) or "no ISA flags read"]
        if self.fp32_peak_gflops:
            parts.append(f"fp32 peak {self.fp32_peak_gflops:.0f} GFLOP/s")
        if self.int8_peak_gops:
            parts.append(f"int8 peak {self.int8_peak_gops:.0f} GOP/s")
        if self.peaks_quiet is False:
            parts.append("peaks measured while the machine was busy")
        return " · ".join(parts)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(lab: Any) -> int:
    """The threads a session computes on: ``--threads`` or an xdist worker's share (the lab's
    settings), else every CPU this process may use (as ORT's and torch's defaults do)."""
    return lab.settings.threads or usable_cpus()


def xdist_share_of_cpus(environ: dict[str, str] | None = None) -> int | None:
    """Threads for one of N pytest-xdist workers: the usable CPUs split N ways (at least 1);
    None outside xdist. Measured on 2 cores, two workers at 2 threads each (torch and ORT
    spin-waiting for each other's cores) took 1.5-1.8x as long for the same BN recalibration
    and evaluation as at 1 thread each (repvgg_a0 recalibration 20.8 s vs 11.6 s)."""
    env = os.environ if environ is None else environ
    count = env.get("PYTEST_XDIST_WORKER_COUNT")
    if not env.get("PYTEST_XDIST_WORKER") or not count or not count.isdigit() or int(count) < 1:
        return None
    return max(1, usable_cpus() // int(count))


class WorkerCpuShare:
    """The threads one of ``count`` pytest-xdist workers of a session should use now: the usable
    CPUs split among the workers still running. Each worker marks itself in a folder the
    session's workers share (named by xdist's testrunuid) from start to finish. Until every
    worker has been seen running it keeps the static share (:func:`xdist_share_of_cpus`); after
    that, a worker left alone takes every CPU: on the smoke tier the resnest50 worker ran its
    last ~140 s at 1 thread beside an idle core."""

    def __init__(self, folder: Path, name: str, count: int):
        self.folder, self.marker, self.count = folder, folder / f"{name}.running", max(1, count)
        self.seen_all = False

    def enter(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(str(os.getpid()))

    def leave(self) -> None:
        self.marker.unlink(missing_ok=True)
        try:
            self.folder.rmdir()  # the last one out
        except OSError:
            pass

    def running(self) -> int:
        try:
            return sum(1 for _ in self.folder.glob("*.running"))
        except OSError:
            return self.count

    def threads(self) -> int:
        running = self.running()
        self.seen_all = self.seen_all or running >= self.count
        return max(1, usable_cpus() // (max(1, running) if self.seen_all else self.count))


def fingerprint(threads: int | None = None, versions: dict[str, str] | None = None,
                cpu: CpuFacts | None = None) -> Fingerprint:
    """The machine fingerprint from the CPU's flags, without peaks: the fp32 and int8 peaks are
    measured by the latency package (``harness.latency.checks.host_figures``), which fills them in."""
    cpu = cpu or cpu_facts()
    if versions is None:
        versions = library_versions()
    return Fingerprint(cpu.model, cpu.cores, cpu.arch, cpu.isa, host_class(cpu), u8s8_may_saturate(cpu),
                       None, None, threads, None, cpu.source, dict(versions))


def library_versions() -> dict[str, str]:
    """Versions of the libraries a verdict depends on (what a report must name)."""
    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "numpy",
                 "pillow", "scikit-image", "pytest", "pytest-benchmark", "pytest-html", "pytest-xdist"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_info() -> dict[str, Any]:
    """The machine as older reports and pytest-benchmark name it (hostname, platform, CPU model, GPU)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hostname": platform.node(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "gpu": _gpu()}


def _gpu() -> str | None:
    """Accelerator execution providers ONNX Runtime offers here (None: no GPU claim)."""
    try:
        import onnxruntime as ort  # lazily: the fingerprint of a --help run needs no runtime

        eps = ort.get_available_providers()
        # only accelerator EPs: onnxruntime also lists AzureExecutionProvider (a remote call EP)
        accel = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "DmlExecutionProvider", "OpenVINOExecutionProvider", "CoreMLExecutionProvider")
        return ",".join(e for e in eps if e in accel) or None
    except Exception:  # onnxruntime missing or broken: no GPU claim
        return None

