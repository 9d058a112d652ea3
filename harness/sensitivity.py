"""What a pass rules out: per check family, the smallest planted defect the suite's real check
function detects (issue 20, item 5), measured here and never written by hand.

Each family plants one defect the self-tests plant (tests/test_preprocess_checks.py,
tests/test_export_checks.py, tests/test_reparam_checks.py, tests/test_latency_timing.py,
tests/test_quant_defects.py) at ascending magnitudes, through the check the suites call, on one
smoke model, and stops at the first magnitude the check fails. The result per defect:

- ``smallest_detected``: the first magnitude whose check raised CheckFailure (None: none did);
- ``not_detected_below``: the largest magnitude tried below it that passed (None: none was);
- every trial with its outcome and the first line of the check's message.

``zooconform sensitivity`` writes the document to fixtures/sensitivity.json; the nightly
report's "What a pass rules out" section reads it (harness/report/sensitivity.py).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .compare import CheckFailure, Inconclusive
from .onnxfile import load_checked
from .testing import Recorder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures" / "sensitivity.json"
SCHEMA = "zooconform-sensitivity/1"
FAMILIES = ("preprocess", "export", "reparam", "latency", "int8")

# the magnitudes swept, ascending (the first detected ends a sweep)
MEAN_SHIFT_GREY_LEVELS = (0.25, 0.5, 1.0, 2.0, 4.0)
CONV_CHANNEL_SCALE = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SLOWDOWN = (1.05, 1.1, 1.2, 1.3, 1.5)
ACTIVATION_SCALE_FACTOR = (0.5, 0.25, 0.1)  # ascending defect: the scale shrinks, clipping grows
MESSAGE_CHARS = 400


@dataclasses.dataclass
class Trial:
    magnitude: Any
    detected: bool
    outcome: str  # "passed", "failed" (CheckFailure), "inconclusive"
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sweep(magnitudes: Iterable[Any], attempt: Callable[[Any], None]) -> list[Trial]:
    """Run ``attempt(m)`` (plant the defect at ``m``, run the real check) for each magnitude in
    order until one raises CheckFailure. An inconclusive check is recorded and is not a detection."""
    trials: list[Trial] = []
    for m in magnitudes:
        try:
            attempt(m)
        except CheckFailure as e:
            trials.append(Trial(m, True, "failed", str(e)[:MESSAGE_CHARS]))
            break
        except Inconclusive as e:
            trials.append(Trial(m, False, "inconclusive", str(e)[:MESSAGE_CHARS]))
        else:
            trials.append(Trial(m, False, "passed"))
    return trials


def thresholds(trials: Sequence[Trial]) -> tuple[Any, Any]:
    """(smallest_detected, not_detected_below) of a sweep's trials."""
    detected = next((t.magnitude for t in trials if t.detected), None)
    passed = [t.magnitude for t in trials if t.outcome == "passed"]
    return detected, (passed[-1] if passed else None)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def entry(defect: str, unit: str, check: str, trials: Sequence[Trial], model: str, command: str,
          **extra: Any) -> dict[str, Any]:
    smallest, below = thresholds(trials)
    return {"defect": defect, "unit": unit, "smallest_detected": smallest, "not_detected_below": below,
            "model": model, "measured_utc": utc_now(), "command": command, "check": check,
            "trials": [t.to_dict() for t in trials], **extra}


# --- preprocess: the deploy config vs the card's reference ---------------------------------

def preprocess_sensitivity(lab: Any, card: Any, command: str) -> list[dict[str, Any]]:
    from .preprocess import checks as pc
    from .preprocess import deploy as dp

    imgs, names = pc.natural_images(lab)
    images = pc.parity_set(imgs, card.preprocess, names)
    good = dp.config_from_card(card)

    def check(cfg: dp.DeployConfig) -> None:
        pc.check_deploy_config(card, cfg, images, Recorder())

    def planted(**changes: Any) -> dp.DeployConfig:
        return dp.from_dict({**good.to_dict(), **changes}, "sensitivity/planted.json")

    what = "harness.preprocess.checks.check_deploy_config"
    mean = sweep(MEAN_SHIFT_GREY_LEVELS, lambda k: check(planted(mean=[m + k for m in good.mean])))
    bgr = sweep([True], lambda _: check(planted(color="BGR")))
    return [entry("deploy config mean shifted by k grey levels (all three channels)", "grey levels", what, mean,
                  card.id, command, swept=list(MEAN_SHIFT_GREY_LEVELS)),
            entry("deploy config with BGR instead of RGB", "yes/no", what, bgr, card.id, command, swept=[True])]


# --- export: one conv output channel of the exported ONNX scaled ---------------------------

def scale_conv_channel(src: Path, dst: Path, conv: int, channel: int, s: float) -> str:
    """``src`` with output channel ``channel`` of Conv number ``conv`` (graph order, convs with a
    weight initializer) scaled by (1 + s), written to ``dst``; returns the node's name."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = load_checked(src)  # the guarded load: external data may not leave its folder
    inits = {i.name: i for i in proto.graph.initializer}
    node = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits][conv]
    init = inits[node.input[1]]
    w = numpy_helper.to_array(init).astype(np.float64)
    w[channel] *= 1 + s
    init.CopyFrom(numpy_helper.from_array(w.astype(numpy_helper.to_array(init).dtype), init.name))
    onnx.save(proto, str(dst))
    return str(node.name)


def export_sensitivity(lab: Any, card: Any, command: str, tmp: Path) -> list[dict[str, Any]]:
    from .export import checks as ec
    from .export.exporter import exported

    res = exported(lab, card, opset=17)
    x, _ = lab.inputs(card, "eval", limit=ec.EXPORT_IMAGES)
    model = lab.reference(card)
    proto = load_checked(res.path)
    inits = {i.name for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    out = []
    for where, index in (("first conv", 0), ("middle conv", len(convs) // 2)):
        names: list[str] = []

        def attempt(s: float, index: int = index, names: list[str] = names) -> None:
            path = tmp / f"export_conv{index}_{s:g}.onnx"
            names.append(scale_conv_channel(res.path, path, index, 0, s))
            ec.check_matches_reference(path, model, x, Recorder(), label=path.name)

        trials = sweep(CONV_CHANNEL_SCALE, attempt)
        out.append(entry(f"output channel 0 of the {where} ({names[0] if names else '?'}) of the opset-17 ONNX export "
                         "scaled by (1 + s)", "s (relative scale)", "harness.export.checks.check_matches_reference",
                         trials, card.id, command, swept=list(CONV_CHANNEL_SCALE), images=len(x)))
    return out


# --- reparam: BN eps dropped in one block --------------------------------------------------

def reparam_blocks(lab: Any, card: Any) -> list[str]:
    """The stem, a middle block and the last block of the card's RepVGG (fusion order)."""
    from .reparam import checks as rc

    names = list(rc.deploy_convs(rc.independent_deploy(lab.reference(card))))
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def reparam_sensitivity(lab: Any, card: Any, command: str) -> list[dict[str, Any]]:
    from .reparam import checks as rc

    out = []
    for block in reparam_blocks(lab, card):
        def attempt(_: bool, block: str = block) -> None:
            rc.check_independent_deploy(card, lab, Recorder(), fusion=rc.InOneBlock(block, rc.EpsBlindFusion))

        trials = sweep([True], attempt)
        out.append(entry(f"BN eps dropped in the fusion of block {block} only (harness.reparam.checks.EpsBlindFusion)",
                         "yes/no", "harness.reparam.checks.check_independent_deploy", trials, card.id, command,
                         swept=[True], block=block))
    return out


# --- latency: an in-run ratio on simulated clocks ------------------------------------------

def latency_trial(factor: float, limit_key: str = "user_over_own_max", jitter: float = 0.02) -> None:
    """The file under test ``factor`` x slower than the suite's export, on a quiet simulated
    machine (harness/latency/simulated.py), judged by the ratio check's verdict."""
    from .latency import checks as lc
    from .latency import timing
    from .latency.simulated import SimulatedMachine

    machine = SimulatedMachine(work_s=0.010, jitter=jitter)
    run = timing.measure_interleaved({"num": machine.model(factor), "den": machine.model(1.0)},
                                     timing.plan_from_tolerances(machine.threads), clocks=machine.clocks)
    r = run.ratio("num", "den")
    lc.judge_ratio(r, lc.ratio_limit(limit_key), limit_key, Recorder(), what="simulated file / own export latency",
                   where="simulated clocks", cause=f"planted slowdown x{factor:g}")


def latency_sensitivity(card_id: str, command: str, limit_key: str = "user_over_own_max") -> list[dict[str, Any]]:
    from .latency import checks as lc

    limit = lc.ratio_limit(limit_key)
    trials = sweep(SLOWDOWN, lambda f: latency_trial(f, limit_key))
    return [entry(f"the file under test slower than the suite's export by a factor (quiet simulated machine, "
                  f"2% saw-tooth jitter; [latency] {limit_key} = {limit.value:g})", "x slowdown",
                  "harness.latency.checks.judge_ratio", trials, card_id, command, swept=list(SLOWDOWN),
                  limit=limit.value, clocks="simulated (harness/latency/simulated.py): no real timing")]


# --- int8: one activation scale shrunk -----------------------------------------------------

def tamper_activation_scale(src: Path, dst: Path, factor: float) -> tuple[str, str]:
    """Multiply the scale of one mid-depth activation QDQ pair by ``factor`` (the defect
    tests/test_quant_defects.py plants too); returns (tensor, scale initializer)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from .quant import checks as qc

    model = load_checked(src)  # the guarded load: external data may not leave its folder
    acts, _ = qc.qdq_pairs(model)
    tensor, _, scale = acts[len(acts) // 2]
    for init in model.graph.initializer:
        if init.name == scale:
            init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * factor).astype(np.float32), scale))
    onnx.save(model, str(dst))
    return str(tensor), str(scale)


def int8_sensitivity(lab: Any, card: Any, command: str, tmp: Path, method: str = "minmax") -> list[dict[str, Any]]:
    from .quant import checks as qc
    from .quant import quantize as qz

    good = qz.quantized(lab, card, method)
    fp32 = qz.fp32_source(lab, card)
    tensors: list[str] = []

    def attempt(f: float) -> None:
        path = tmp / f"int8_scale_{f:g}.onnx"
        tensors.append(tamper_activation_scale(good, path, f)[0])
        subject = qc.Subject(path, fp32, f"int8 ({method}) {card.id}, one activation scale x{f:g}",
                             float_for_report=qz.preprocessed(lab, fp32))
        qc.check_layer_sqnr(card, lab, Recorder(), method, subject=subject)

    trials = sweep(ACTIVATION_SCALE_FACTOR, attempt)
    return [entry(f"the scale of one mid-depth activation QDQ pair ({tensors[0] if tensors else '?'}) of the {method} "
                  "int8 model multiplied by f (values clip)", "f (scale factor; smaller is the larger defect)",
                  "harness.quant.checks.check_layer_sqnr", trials, card.id, command,
                  swept=list(ACTIVATION_SCALE_FACTOR))]


# --- all families --------------------------------------------------------------------------

def measure(model: str = "repvgg_a0", families: Sequence[str] = FAMILIES, command: str = "zooconform sensitivity",
            lab: Any = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The document: ``{family: {defect, smallest_detected, not_detected_below, model,
    measured_utc, command, ...}}``; a family with more than one planted defect lists the others
    under ``more`` (same fields)."""
    from .errors import OptionError

    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise OptionError("--families", ",".join(unknown), f"unknown family; known: {', '.join(FAMILIES)}")
    if lab is None:
        from .lab import Lab, Settings

        lab = Lab(Settings(models=[model]))
    card = lab.zoo[model]
    doc: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="zooconform-sensitivity-") as d:
        tmp = Path(d)
        for family in families:
            t0 = time.monotonic()
            if progress:
                progress(f"sensitivity: {family} on {model} ...")
            if family == "preprocess":
                entries = preprocess_sensitivity(lab, card, command)
            elif family == "export":
                entries = export_sensitivity(lab, card, command, tmp)
            elif family == "reparam":
                entries = reparam_sensitivity(lab, card, command)
            elif family == "latency":
                entries = latency_sensitivity(card.id, command)
            else:
                entries = int8_sensitivity(lab, card, command, tmp)
            seconds = round(time.monotonic() - t0, 1)
            for e in entries:
                e["seconds"] = seconds
            doc[family] = {**entries[0], **({"more": entries[1:]} if len(entries) > 1 else {})}
            if progress:
                progress(f"sensitivity: {family}: {describe(doc[family])} ({seconds} s)")
    return doc


def describe(e: dict[str, Any]) -> str:
    """One line for a defect entry (terminal; the report has its own rendering)."""
    def fmt(v: Any) -> str:
        return "yes" if v is True else "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    return (f"{e.get('defect')}: smallest detected {fmt(e.get('smallest_detected'))}, "
            f"not detected at {fmt(e.get('not_detected_below'))} ({e.get('unit')})")
