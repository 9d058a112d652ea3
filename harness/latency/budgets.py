"""Latency budgets per machine profile: ``fixtures/budgets/<profile>.toml``.

A profile names a kind of machine and holds absolute budgets (the largest median latency
allowed, in ms) per model x precision x batch, plus an optional throughput floor. Ratio
budgets (int8 / fp32, deploy / train form, batch 8 per image / batch 1, user ONNX / own
export) hold on any machine and live in ``fixtures/tolerances.toml`` [latency] instead.

File shape::

    [profile]
    description = "2-core AMD EPYC VM, ONNX Runtime CPU EP"
    runtime = "ort"                     # a --runtime name (harness/runtimes): ort, openvino, torch, ort-trt ...
    provider = "CPUExecutionProvider"   # older form, ONNX Runtime only: CPU/CUDA/TensorRT EP = ort/ort-cuda/ort-trt
    threads = 2                         # intra-op threads the figures hold for (CPU runtimes)
    provisional = false                 # true: not from a quiet run; never detected, only --profile
    source = "what was measured, with which command"
    headroom = 1.3                      # optional: factor applied to the measured medians
    peak_gflops = 545.0                 # the quiet fp32 MatMul peak of the host the figures come from
    int8_peak_gops = 1800.0             # optional: its uint8 x int8 MatMulInteger peak (GOP/s)
    instances = 2                       # optional: concurrent sessions of the throughput figure

    [profile.match]                     # how the profile is detected
    host_class = "x86-avx512-vnni"      # harness/host.py: decides, with the peaks, whether the budgets apply
    cpu = "AMD EPYC*"                   # optional: /proc/cpuinfo model name (fnmatch pattern)
    cores = 2                           # optional: os.cpu_count()
    gpu = "Tesla T4*"                   # CUDA device 0's name (torch), when a GPU is the target

    [models.<id>]                       # ids of fixtures/zoo/*.toml
    fp32 = { b1 = 9.0, b4 = 31.0, b8 = 60.0 }   # ms; keys fp32 | fp16 | int8, batches b<N>
    int8 = { b1 = 5.0 }
    throughput_ips = 120.0              # optional: images/s at batch 8, ``instances`` sessions
    note = "..."                        # optional

Every key is checked: a typo (``fp23``, ``thread``, ``b1 = "9"``, an unknown model id) is a
:class:`ConfigError` naming the file, the key and what was expected.

Which profile is taken (:func:`choose`), in this order:

1. ``--profile NAME`` (``fixtures/budgets/NAME.toml``, or a path to a ``.toml`` file);
   ``--profile none`` judges ratios only.
2. Detection: the non-provisional profiles whose ``[profile.match]`` cpu / cores / gpu fit
   this machine (a key left out fits any machine). Among those that apply to this host
   (below), the one whose recorded fp32 peak is nearest this host's; the reason says so.
   Never on CI (the ``CI`` environment variable is set, as GitHub Actions and GitLab do):
   shared runners are not the machines the budgets were measured on.
3. Otherwise none: **ratios only**. The absolute-budget tests still measure and record
   every figure, then skip with the reason.

Whether a CPU profile's budgets **apply** on this host (:func:`applicability`): the
machine kind is not enough, the CPU under a "2-vCPU AMD EPYC" VM differs between hosts
(README.md, "Hosts"). A CPU profile applies only when this host's class
(``harness/host.py``) equals its ``[profile.match] host_class`` AND this host's measured fp32
peak (and int8 peak, where the profile records one) is within ``profile_peak_rel``
(fixtures/tolerances.toml [latency]) of the recorded one. When it does not, the absolute
budgets are **not applicable**: not judged (neither fail nor pass), figures still recorded,
and the run says so in one line with recorded vs measured figures. ``--rescale-budgets``
judges them anyway, each budget scaled by recorded peak / measured peak (fp32 peak for fp32
cells, int8 peak for int8 cells where the profile records one), figures and factor shown.

Recording a profile from runs (quiet machine, ``pytest suites -m latency`` run a few
times; results.json or pytest-benchmark's ``--benchmark-json`` files)::

    zooconform budgets record reports/run1/results.json reports/run2/results.json \\
        --profile cpu-2core --headroom 1.3 [--out fixtures/budgets/cpu-2core.toml]

takes, per model x precision x batch, the slowest median of the runs' *quiet*
measurements times ``headroom`` (throughput: the lowest figure divided by it), prints the
run-to-run spread of each cell to choose the headroom by, and writes the profile with
``[profile.match]`` set to the runs' machine. ``zooconform budgets check [NAME ...]``
validates profiles; ``zooconform budgets summary RESULTS.json ...`` lists every latency
test's outcome and figure per run with the run-to-run spread (the 3x flake check).
(The module also has the ``add_arguments`` / ``main`` shape of a
``zooconform`` verb, so ``zooconform budgets record ...`` is one line in harness/cli.py.)

The ``t4-tensorrt`` profile is the seeds' T4 TensorRT table (seed 002, PaddleClas HRNet
page) as the registry carries it (``PublishedRow.latency_ms`` of the ppcls seed-002 rows):
``zooconform budgets t4 --out fixtures/budgets/t4-tensorrt.toml`` regenerates it.
"""
from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import tomllib
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from ..config import Expect, Strict, did_you_mean, problem, validate
from ..errors import ConfigError

BUDGETS = Path(__file__).resolve().parents[2] / "fixtures" / "budgets"
PRECISIONS = ("fp32", "fp16", "int8")
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
PROVIDER_RUNTIMES = {"CPUExecutionProvider": "ort", "CUDAExecutionProvider": "ort-cuda",
                     "TensorrtExecutionProvider": "ort-trt"}  # the older ``provider`` key, as runtimes
CPU_PROVIDER = "CPUExecutionProvider"
NONE = "none"
_BATCH_KEY = re.compile(r"^b([1-9][0-9]*)$")


@dataclass(frozen=True)
class Budget:
    profile: str
    model: str
    precision: str
    batch: int
    ms: float
    file: Path
    provisional: bool
    recorded_ms: float | None = None  # set when rescaled: the profile's own figure
    scale: float = 1.0                # ms = recorded_ms x scale (--rescale-budgets)
    scale_note: str = ""              # the peaks behind the factor

    @property
    def key(self) -> str:
        return f"models.{self.model}.{self.precision}.b{self.batch}"

    @property
    def where(self) -> str:
        return f"{self.file.name} [{self.key}]" + (" (provisional profile)" if self.provisional else "")

    @property
    def text(self) -> str:
        """``43.2 ms`` or ``43.2 ms (27.45 ms x 1.572: ...)``"""
        if self.recorded_ms is None:
            return f"{self.ms:g} ms"
        return f"{self.ms:.4g} ms ({self.recorded_ms:g} ms x {self.scale:.3f}: {self.scale_note})"

    @property
    def expected(self) -> str:
        return f"<= {self.text}"

    def rescaled(self, factor: float, note: str) -> Budget:
        return replace(self, ms=self.ms * factor, recorded_ms=self.ms, scale=factor, scale_note=note)


@dataclass(frozen=True)
class Profile:
    name: str
    file: Path
    description: str
    provider: str | None
    threads: int | None
    provisional: bool
    source: str
    headroom: float | None
    peak_gflops: float | None
    instances: int | None
    match: dict[str, Any]
    latency: dict[str, dict[str, dict[int, float]]]  # model -> precision -> batch -> ms
    throughput: dict[str, float] = field(default_factory=dict)  # model -> images/s
    int8_peak_gops: float | None = None
    runtime: str = "ort"  # the --runtime whose figures these are (harness/runtimes)

    @property
    def host_class(self) -> str | None:
        return self.match.get("host_class")

    @property
    def is_cpu(self) -> bool:
        return runtime_device(self.runtime) == "CPU"

    def recorded(self) -> str:
        """``x86-avx512-vnni at fp32 198 GFLOP/s, int8 840 GOP/s``"""
        return _host_text(self.host_class or "an unrecorded host class", self.peak_gflops, self.int8_peak_gops,
                          self.int8_peak_gops is not None)

    def budget(self, model: str, precision: str, batch: int) -> Budget | None:
        ms = self.latency.get(model, {}).get(precision, {}).get(batch)
        if ms is None:
            return None
        return Budget(self.name, model, precision, batch, ms, self.file, self.provisional)


# --- loading and validation ---------------------------------------------------------------

SHAPE = "harness/latency/budgets.py"
FIX = f"see the file shape in {SHAPE}"


def _unknown_text(what: str, name: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    return f"unknown {what} '{name}' (expected one of {', '.join(allowed)}){did_you_mean(name, allowed)}"


def _unknown_key(file: Path | str, key: str, name: str, allowed: list[str]) -> ConfigError:
    """The wording of an unknown key (a top-level one is a table: ``[profiel]``)."""
    return ConfigError(file, key, _unknown_text("key" if "." in key else "table", name, allowed), fix=FIX)


# a finite number > 0; anything else says ``expected a number of <unit> > 0, got ...``
_POSITIVE = Field(gt=0, allow_inf_nan=False)
_Ms = Annotated[float, _POSITIVE, Expect("a number of milliseconds > 0")]
_Factor = Annotated[float, _POSITIVE, Expect("a number > 0 (factor)")]
_Gflops = Annotated[float, _POSITIVE, Expect("a number of GFLOP/s > 0")]
_Gops = Annotated[float, _POSITIVE, Expect("a number of GOP/s > 0")]
_Ips = Annotated[float, _POSITIVE, Expect("a number of images/s > 0")]


def _batch_key(key: str) -> str:
    if not _BATCH_KEY.match(key):
        raise problem(f"unknown batch key '{key}' (expected b<batch> such as b1, b4, b8)", fix="name batches b1, b4, b8")
    return key


def _not_empty(batches: dict[str, float]) -> dict[str, float]:
    if not batches:
        raise problem("expected a table of batches such as { b1 = 9.0, b8 = 60.0 }, got {}",
                      fix="one ms budget per batch: b1, b4, b8")
    return batches


def _batches_schema(schema: dict[str, Any]) -> None:
    schema["patternProperties"] = {_BATCH_KEY.pattern: schema.pop("additionalProperties", {})}
    schema["additionalProperties"] = False


_Batches = Annotated[dict[Annotated[str, AfterValidator(_batch_key)], _Ms],
                     AfterValidator(_not_empty),
                     Field(description="milliseconds per call, by batch: b1, b4, ...", json_schema_extra=_batches_schema)]


class Match(Strict):
    """[profile.match]: how the profile is detected (a key left out fits any machine)."""

    host_class: str | None = Field(None, description="harness/host.py's class of the host the figures come from")
    cpu: str | None = Field(None, description="/proc/cpuinfo model name (fnmatch pattern)")
    cores: int | None = Field(None, description="os.cpu_count()")
    gpu: str | None = Field(None, description="CUDA device 0's name (fnmatch pattern)")


class Head(Strict):
    """[profile]: the machine and the run the budgets hold for."""

    description: str = ""
    runtime: str | None = Field(None, description="a --runtime name (harness/runtimes): ort, openvino, torch, ort-trt ...")
    provider: str | None = Field(None, description="older form, ONNX Runtime only", json_schema_extra={"enum": list(PROVIDERS)})
    threads: Annotated[int, Field(ge=1), Expect("an integer >= 1")] | None = Field(
        None, description="intra-op threads the figures hold for (CPU runtimes)")
    provisional: bool = False
    source: str = ""
    headroom: _Factor | None = None
    peak_gflops: _Gflops | None = None
    int8_peak_gops: _Gops | None = None
    instances: int | None = None
    match: Match = Field(default_factory=lambda: Match.model_validate({}))

    @model_validator(mode="after")
    def _runtime_and_threads(self) -> Head:
        provider, runtime = self.provider, self.runtime
        if provider is None and runtime is None:
            raise problem("missing required key 'runtime' (or the older 'provider')",
                          fix=f"add runtime = one of {', '.join(_runtime_names())}", key="runtime")
        if provider is not None and provider not in PROVIDERS:
            raise problem(_unknown_text("provider", provider, PROVIDERS), fix=FIX, key="provider")
        if runtime is not None and runtime not in _runtime_names():
            raise problem(_unknown_text("runtime", runtime, _runtime_names()), fix=FIX, key="runtime")
        if provider is not None and runtime is not None and PROVIDER_RUNTIMES[provider] != runtime:
            raise problem(f"provider {provider!r} is runtime {PROVIDER_RUNTIMES[provider]!r}, but the profile says "
                          f"runtime = {runtime!r}", fix="keep one of the two keys", key="provider")
        if runtime_device(runtime or PROVIDER_RUNTIMES[str(provider)]) == "CPU" and self.threads is None:
            raise problem("a CPU profile needs the intra-op thread count its figures hold for", fix="add threads = N",
                          key="threads")
        return self


class ModelBudgets(Strict):
    """[models.<id>]: the budgets of one model of fixtures/zoo (ms per call, by precision and batch)."""

    fp32: _Batches | None = None
    fp16: _Batches | None = None
    int8: _Batches | None = None
    throughput_ips: _Ips | None = Field(None, description="images/s at batch 8, `instances` sessions")
    note: str = ""


class File(Strict):
    """A latency budget profile: absolute budgets per model x precision x batch on one kind of machine."""

    # validated with context={"valid_models": [...]}: the registry's ids, or the caller's

    profile: Head
    models: dict[str, ModelBudgets] = {}

    @field_validator("models", mode="before")
    @classmethod
    def _known_models(cls, models: Any, info: ValidationInfo) -> Any:
        valid = (info.context or {}).get("valid_models")
        if isinstance(models, dict) and valid is not None:
            for model in models:
                if model not in valid:
                    raise problem(_unknown_text("model id", model, valid), fix=FIX, key=model)
        return models


PROFILE_KEYS = tuple(Head.model_fields)
MATCH_KEYS = tuple(Match.model_fields)
MODEL_KEYS = tuple(ModelBudgets.model_fields)
assert MODEL_KEYS[:len(PRECISIONS)] == PRECISIONS, "a precision without its budgets"


def load_profile(path: Path | str, valid_models: Iterable[str] | None = None) -> Profile:
    """Read and strictly validate one profile file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "-", "budget profile not found", fix=_available_fix(path.parent)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "-", f"not valid TOML: {e}", fix="fix the TOML syntax") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, "-", f"not UTF-8 text ({e.reason} at byte {e.start})",
                          fix="save the profile as UTF-8") from None
    except IsADirectoryError:
        raise ConfigError(path, "-", "is a directory, not a budget profile", fix=_available_fix(path.parent)) from None
    valid = list(valid_models) if valid_models is not None else _registry_ids()
    doc: File = validate(File, data, path, shape=SHAPE, unknown=_unknown_key, context={"valid_models": valid})
    head = doc.profile
    latency: dict[str, dict[str, dict[int, float]]] = {}
    for model, entry in doc.models.items():
        for precision in PRECISIONS:
            batches = getattr(entry, precision)
            if batches is not None:
                latency.setdefault(model, {})[precision] = {int(b[1:]): float(ms) for b, ms in batches.items()}
    throughput = {model: float(e.throughput_ips) for model, e in doc.models.items() if e.throughput_ips is not None}
    return Profile(name=path.stem, file=path, description=head.description, provider=head.provider,
                   threads=head.threads, provisional=head.provisional, source=head.source, headroom=head.headroom,
                   peak_gflops=head.peak_gflops, instances=head.instances,
                   match=head.match.model_dump(exclude_unset=True), latency=latency, throughput=throughput,
                   int8_peak_gops=head.int8_peak_gops, runtime=head.runtime or PROVIDER_RUNTIMES[str(head.provider)])


def _runtime_names() -> list[str]:
    from .. import runtimes

    return runtimes.names()


def runtime_device(name: str) -> str:
    """"CPU" for a runtime computing on this host's CPU (threads apply), else its device."""
    from .. import runtimes

    name = name.partition(":")[0]
    if name in PROVIDER_RUNTIMES.values():  # ORT's EPs: known without importing onnxruntime
        return "CPU" if name == "ort" else "GPU"
    try:
        return getattr(runtimes.get(name), "device", "CPU")
    except (ValueError, ImportError):
        return "CPU"


def _registry_ids() -> list[str]:
    from ..zoo import load_zoo

    return list(load_zoo())


def profile_files(folder: Path = BUDGETS) -> list[Path]:
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def _available_fix(folder: Path) -> str:
    names = [p.stem for p in profile_files(folder)]
    return (f"available profiles: {', '.join(names) or '(none)'}; --profile {NONE} judges ratios only; "
            "record one with zooconform budgets record")


# --- choosing the profile -----------------------------------------------------------------

def _host_text(host_class: str, fp32: float | None, int8: float | None, show_int8: bool, kind: str = "fp32 ") -> str:
    out = f"{host_class} at {kind}{fp32:.0f} GFLOP/s" if fp32 else f"{host_class} (fp32 peak not recorded)"
    if show_int8:
        out += f", int8 {int8:.0f} GOP/s" if int8 else ", int8 peak not measured"
    return out


@dataclass(frozen=True)
class Applicability:
    """Whether a CPU profile's absolute budgets hold on this host, and the figures that say so."""

    profile: str
    applies: bool
    line: str                    # the run's one line: "absolute budgets not applicable: ..."
    why: str                     # the deciding rule, short
    recorded: dict[str, Any]     # host_class, fp32_peak_gflops, int8_peak_gops of the profile
    measured: dict[str, Any]     # the same of this host (+ peaks_quiet, threads)
    tolerance: float

    def scale(self, precision: str) -> tuple[float | None, str]:
        """(recorded peak / measured peak, how it was formed) for ``precision``'s cells; (None,
        why not) when it cannot be formed. Latency scales inversely with the peak: a host with
        half the peak gets twice the time."""
        if self.measured.get("peaks_quiet") is False:
            return None, "this host's peaks were measured under contention (too low): no rescaling by them"
        kind, unit, key = peak_kind(precision)
        rec, meas = self.recorded.get(key), self.measured.get(key)
        if not rec:
            key_name = "int8_peak_gops" if kind == "int8" else "peak_gflops"
            return None, (f"profile {self.profile} records no {kind} peak ({key_name}): "
                          f"its {precision} budgets cannot be rescaled to this host")
        if not meas:
            return None, f"this host's {kind} peak was not measured: no rescaling"
        return rec / meas, (f"{kind} peak recorded {rec:.0f} / measured {meas:.0f} {unit} "
                            f"({self.recorded.get('host_class')} -> {self.measured.get('host_class')}), --rescale-budgets")

    def figures(self) -> dict[str, Any]:
        out = {"budgets_applicable": self.applies, "applicability": self.line,
               "profile_peak_rel_tolerance": self.tolerance}
        out.update({f"profile_{k}": v for k, v in self.recorded.items()})
        return out


def peak_kind(precision: str) -> tuple[str, str, str]:
    """(kind, unit, fingerprint key) of the GEMM peak a precision's latency follows."""
    return ("int8", "GOP/s", "int8_peak_gops") if precision == "int8" else ("fp32", "GFLOP/s", "fp32_peak_gflops")


def host_figures(host: Any) -> dict[str, Any]:
    """This host's fingerprint as figures of a latency test (``zooconform budgets record`` reads them
    from pytest-benchmark JSON, which has no machine section of ours)."""
    if host is None:
        return {}
    return {"host_class": host.host_class, "host_fp32_peak_gflops": host.fp32_peak_gflops,
            "host_int8_peak_gops": host.int8_peak_gops, "host_peaks_quiet": host.peaks_quiet,
            "host_peak_threads": host.peak_threads}


def _peak_tolerance() -> float:
    from ..tolerances import tolerance

    return tolerance("latency", "profile_peak_rel")


def applicability(profile: Profile, host: Any, tolerance: float | None = None) -> Applicability | None:
    """Whether ``profile``'s budgets apply on ``host`` (a :class:`harness.host.Fingerprint` with
    measured peaks); None for non-CPU profiles (they match by GPU name) or without a host."""
    if host is None or not profile.is_cpu:
        return None
    tol = _peak_tolerance() if tolerance is None else tolerance
    rec = {"host_class": profile.host_class, "fp32_peak_gflops": profile.peak_gflops,
           "int8_peak_gops": profile.int8_peak_gops, "threads": profile.threads}
    meas = {"host_class": host.host_class, "fp32_peak_gflops": host.fp32_peak_gflops,
            "int8_peak_gops": host.int8_peak_gops, "peaks_quiet": host.peaks_quiet, "threads": host.peak_threads}
    show_int8 = profile.int8_peak_gops is not None
    mine = f"profile {profile.name} is {profile.recorded()}"
    theirs = "this host is " + _host_text(host.host_class, host.fp32_peak_gflops, host.int8_peak_gops, show_int8, "")
    busy = "; its peaks were measured under contention" if host.peaks_quiet is False else ""

    def result(ok: bool, why: str) -> Applicability:
        head = "absolute budgets apply" if ok else "absolute budgets not applicable"
        return Applicability(profile.name, ok, f"{head}: {mine}; {theirs} ({why})", why, rec, meas, tol)

    if not profile.host_class:
        return result(False, "the profile records no host class: add [profile.match] host_class or re-record it "
                             "on its host (zooconform budgets record)")
    if profile.host_class != host.host_class:
        return result(False, "another host class: other kernels")
    if profile.threads and host.peak_threads and profile.threads != host.peak_threads:
        return result(False, f"peaks measured at {host.peak_threads} threads, the profile holds for {profile.threads}: "
                             f"run with --threads {profile.threads}")
    if not profile.peak_gflops:
        return result(False, "the profile records no fp32 peak (peak_gflops): re-record it")
    checks = [("fp32", profile.peak_gflops, host.fp32_peak_gflops)]
    if profile.int8_peak_gops:
        checks.append(("int8", profile.int8_peak_gops, host.int8_peak_gops))
    rels = []
    for kind, recorded, measured in checks:
        if not measured:
            return result(False, f"this host's {kind} peak was not measured")
        rel = measured / recorded - 1
        if abs(rel) > tol:
            low = " (too low: re-run on a quiet machine)" if busy and rel < 0 else ""
            return result(False, f"{kind} peak {rel:+.0%}, outside +-{tol:.0%} "
                                 f"[fixtures/tolerances.toml [latency] profile_peak_rel]{busy}{low}")
        rels.append(f"{kind} peak {rel:+.0%}")
    return result(True, f"same class, {', '.join(rels)} within +-{tol:.0%}{busy}")


@dataclass(frozen=True)
class Choice:
    profile: Profile | None
    how: str  # "--profile" | "detected" | "none"
    reason: str
    applicability: Applicability | None = None  # None: not a CPU profile, or not checked
    rescale: bool = False                       # --rescale-budgets
    host: Any = None                            # this host's harness.host.Fingerprint, when known

    @property
    def ratios_only(self) -> bool:
        return self.profile is None

    @property
    def applies(self) -> bool:
        return self.profile is not None and (self.applicability is None or self.applicability.applies)

    @property
    def line(self) -> str:
        """What the run says about its absolute budgets, in one line."""
        if self.profile is None:
            return f"absolute budgets not judged: {self.reason}"
        if self.applicability is None:
            return f"absolute budgets of profile {self.profile.name}: {self.reason}"
        line = f"{self.applicability.line}; {self.reason}"
        if not self.applicability.applies and self.rescale:
            line += "; --rescale-budgets: judged with budgets scaled by the peak ratio where the profile records it"
        return line

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"profile": self.profile.name if self.profile else None, "profile_how": self.how,
                               "budgets_line": self.line, **host_figures(self.host)}
        if self.applicability is not None:
            out.update(self.applicability.figures())
            out["rescale_budgets"] = self.rescale
        return out


def this_machine() -> dict[str, Any]:
    """What [profile.match] is compared with: cpu model name, cores, CUDA device 0's name."""
    from ..report.results import machine_info

    info = machine_info()
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # no torch CUDA runtime: no GPU name to match
        gpu = None
    return {"cpu": info.get("cpu") or "", "cores": info.get("cores"), "gpu": gpu}


def matches(profile: Profile, machine: dict[str, Any]) -> bool:
    """[profile.match] cpu / cores / gpu against this machine (host_class is not a pattern: it
    decides, with the peaks, whether the budgets apply; see :func:`applicability`)."""
    if not profile.match:
        return False
    for k, want in profile.match.items():
        if k == "host_class":
            continue
        have = machine.get(k)
        if have is None:
            return False
        if isinstance(want, str) and not fnmatch.fnmatchcase(str(have), want):
            return False
        if not isinstance(want, str) and have != want:
            return False
    return True


def _peak_distance(prof: Profile, host: Any) -> float:
    if not prof.peak_gflops or host is None or not host.fp32_peak_gflops:
        return math.inf
    return abs(math.log(prof.peak_gflops / host.fp32_peak_gflops))


def choose(name: str | None, machine: dict[str, Any] | None = None, env: dict[str, str] | None = None,
           folder: Path = BUDGETS, valid_models: Iterable[str] | None = None, host: Any = None,
           rescale: bool = False, tolerance: float | None = None) -> Choice:
    """The profile whose absolute budgets are judged (see the module docstring for the rules).
    ``host``: this machine's :class:`harness.host.Fingerprint` with measured peaks; without it
    applicability is not checked."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if name:
        if name.lower() == NONE:
            return Choice(None, "none", f"--profile {NONE}: ratios only", host=host)
        path = Path(name) if name.endswith(".toml") else folder / f"{name}.toml"
        if not path.is_file():
            raise ConfigError(path, "--profile", f"no budget profile '{name}'", fix=_available_fix(folder))
        prof = load_profile(path, valid_models)
        return Choice(prof, "--profile", f"--profile {name}", applicability(prof, host, tolerance), rescale, host)
    if environ.get("CI"):
        return Choice(None, "none", "no --profile given and CI is set (no detection on shared runners): ratios only",
                      host=host)
    machine = this_machine() if machine is None else machine
    found = []
    for pf in profile_files(folder):
        prof = load_profile(pf, valid_models)
        if not prof.provisional and matches(prof, machine):
            found.append(prof)
    desc = f"cpu '{machine.get('cpu')}', {machine.get('cores')} cores"
    desc += f", gpu '{machine['gpu']}'" if machine.get("gpu") else ""
    if host is not None:
        desc += f", host class {host.host_class}"
    apps = {p.name: applicability(p, host, tolerance) for p in found}
    fitting = [p for p in found if (app := apps[p.name]) is None or app.applies]
    if len(fitting) == 1:
        p = fitting[0]
        return Choice(p, "detected", f"profile {p.name} detected ({desc})", apps[p.name], rescale, host)
    if len(fitting) > 1:
        if all(math.isfinite(_peak_distance(p, host)) for p in fitting):
            p = min(fitting, key=lambda q: _peak_distance(q, host))
            others = ", ".join(f"{q.name} ({q.peak_gflops:.0f})" for q in fitting if q is not p)
            return Choice(p, "detected", f"profile {p.name} detected ({desc}): of the profiles that apply here, its "
                                         f"recorded fp32 peak ({p.peak_gflops:.0f} GFLOP/s) is nearest this host's "
                                         f"({host.fp32_peak_gflops:.0f}); also applying: {others}",
                          apps[p.name], rescale, host)
        return Choice(None, "none", f"profiles {', '.join(p.name for p in fitting)} all match this machine ({desc}): "
                                    "ratios only; pick one with --profile NAME", host=host)
    if found:  # they match the machine kind, but not this host: say so, with the figures
        p = min(found, key=lambda q: (q.host_class != getattr(host, "host_class", None), _peak_distance(q, host), q.name))
        more = f"; none of {', '.join(q.name for q in found)} applies to this host" if len(found) > 1 else ""
        return Choice(p, "detected", f"detected by its [profile.match] ({desc}){more}", apps[p.name], rescale, host)
    return Choice(None, "none", f"no budget profile matches this machine ({desc}): ratios only; "
                                "pick one with --profile NAME or record one (zooconform budgets record)", host=host)
