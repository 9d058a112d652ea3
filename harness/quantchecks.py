"""int8 checks: the quantized model against its fp32 reference, and where it goes wrong.

Plain functions that know nothing of pytest; each raises ``CheckFailure`` (one message
shape) or ``Inconclusive`` and records every figure it measures.

Two tolerances, chosen by what the run has:

- **labels** (real ImageNet and real weights): fp32 and int8 top-1/top-5 (the seeds'
  definitions); int8 top-1 must reach 99% of fp32 top-1 (the MLPerf rule) and stay within
  the family's absolute drop; on a subset of the validation set both bounds are widened by
  the binomial half-width and the message says so.
- **no labels** (the embedded default): int8 against fp32, measured against a *noise
  floor*, fp32 itself under +-2 grey levels of input noise. Top-1 agreement and the cosine
  of logits after removing the dataset-mean logit vector (the raw cosine is dominated by
  the logit vector every image shares) are each judged relative to their floor. A model
  whose fp32 predictions are degenerate (too few distinct classes) is inconclusive, never
  passed.

When a check fails, ``layer_report`` names the layers: float vs quantized activations per
tensor (``onnxruntime.quantization.qdq_loss_debug``), SQNR by depth and the worst tensors.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import quantize as qmod
from . import runtime as rt
from .compare import (CheckFailure, Inconclusive, binomial_halfwidth, check, cosine_rows, distinct_top1, message,
                      top1_agreement, topk_accuracy)
from .tolerances import tolerance

SECTION = "quant"
IMAGENET_VAL_IMAGES = 50_000
EVAL_BATCH = 50
REPORT_IMAGES = 4  # images for the per-tensor report: activations of every tensor are held
WORST_SHOWN = 5
DEPTH_BINS = 5


# --- metrics ----------------------------------------------------------------------------

def grey_level_noise(x: np.ndarray, std: tuple[float, float, float], levels: int, seed: int = 0) -> np.ndarray:
    """``x`` (normalised NCHW) plus integer pixel noise in [-levels, levels] grey levels.

    Grey levels are 1/255 of the [0, 1] input range; normalisation divides by the card's
    per-channel ``std``, so one level is ``1 / (255 * std[c])`` normalised units.
    """
    rng = np.random.default_rng(seed)
    noise = rng.integers(-levels, levels + 1, size=x.shape).astype(np.float32)
    per_channel = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(1, -1, 1, 1)
    return (x + noise * per_channel).astype(np.float32)


def centred_cosine(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean cosine over images of the logits after removing ``ref``'s dataset-mean logit vector.

    Random and trained classifiers share a large common logit vector across images; the
    raw cosine sees mostly that (0.99+ for a model that flips a third of its top-1s).
    """
    mu = np.asarray(ref, dtype=np.float64).mean(axis=0, keepdims=True)
    return float(np.mean(cosine_rows(np.asarray(ref, np.float64) - mu, np.asarray(out, np.float64) - mu)))


def sqnr_db(signal_sq: float, noise_sq: float) -> float:
    """10*log10(sum x^2 / sum (x - y)^2): ORT's ``compute_signal_to_quantization_noice_ratio``
    (20*log10 of the norm ratio, eps-clamped) computed from accumulated sums."""
    eps = float(np.finfo(np.float64).eps)
    return float(20 * np.log10(max(np.sqrt(signal_sq), eps) / max(np.sqrt(noise_sq), eps)))


# --- the label-free judgement -----------------------------------------------------------

@dataclass
class LabelFree:
    images: int
    distinct_fp32: int
    agreement: float
    cosine: float
    floor_agreement: float
    floor_cosine: float

    @property
    def agreement_vs_floor(self) -> float:
        return self.agreement / self.floor_agreement if self.floor_agreement > 0 else 0.0

    @property
    def cosine_distance_vs_floor(self) -> float:
        """(1 - cos int8) / (1 - cos floor): the int8 error in units of the noise floor."""
        floor = max(1.0 - self.floor_cosine, 1e-12)
        return (1.0 - self.cosine) / floor

    def figures(self) -> dict:
        return {"eval_images": self.images, "fp32_distinct_top1": self.distinct_fp32,
                "top1_agreement": round(self.agreement, 4), "centred_cosine": round(self.cosine, 5),
                "floor_top1_agreement": round(self.floor_agreement, 4), "floor_centred_cosine": round(self.floor_cosine, 5),
                "agreement_vs_floor": round(self.agreement_vs_floor, 3),
                "cosine_distance_vs_floor": round(self.cosine_distance_vs_floor, 2)}


def label_free_figures(fp32: np.ndarray, int8: np.ndarray, fp32_noisy: np.ndarray) -> LabelFree:
    return LabelFree(len(fp32), distinct_top1(fp32), top1_agreement(fp32, int8), centred_cosine(fp32, int8),
                     top1_agreement(fp32, fp32_noisy), centred_cosine(fp32, fp32_noisy))


def judge_label_free(m: LabelFree, *, subject: str, where: str, explain=None) -> dict:
    """Raise Inconclusive (degenerate fp32) or CheckFailure (int8 beyond its floor); return figures.

    ``explain()`` is called only on failure and returns a cause suffix (the layer report).
    """
    figs = m.figures()
    need = int(tolerance(SECTION, "min_distinct_classes"))
    levels = int(tolerance(SECTION, "noise_grey_levels"))
    if m.distinct_fp32 < need:
        raise Inconclusive(message(f"distinct fp32 top-1 classes over {m.images} eval images", m.distinct_fp32,
                                   f">= {need}", where,
                                   cause="degenerate fp32 model: it predicts (almost) one class for every image, so "
                                         "int8 'agreement' proves nothing (a model calibrated on grey images agrees too)"),
                           figs, failing=True)
    min_agree = tolerance(SECTION, "agreement_vs_floor_min")
    max_cos = tolerance(SECTION, "cosine_distance_vs_floor_max")
    bad = []
    if m.agreement_vs_floor < min_agree:
        bad.append(("top-1 agreement / noise-floor agreement", f"{m.agreement_vs_floor:.3f} "
                    f"({m.agreement:.1%} vs floor {m.floor_agreement:.1%})", f">= {min_agree}"))
    if m.cosine_distance_vs_floor > max_cos:
        bad.append(("centred-logit cosine distance / noise-floor distance", f"{m.cosine_distance_vs_floor:.2f}x "
                    f"(cos {m.cosine:.4f} vs floor {m.floor_cosine:.4f})", f"<= {max_cos}x"))
    if bad:
        what = " and ".join(b[0] for b in bad)
        measured = "; ".join(b[1] for b in bad)
        expected = "; ".join(b[2] for b in bad)
        cause = (f"{subject} departs from fp32 more than fp32 does under +-{levels} grey levels of input noise")
        extra = explain() if explain else None
        if extra:
            cause += f"; {extra}"
        raise CheckFailure(message(f"{what} of {subject}", measured, expected, where, cause=cause), figs)
    return figs


# --- the labelled judgement -------------------------------------------------------------

@dataclass
class Labelled:
    images: int
    fp32_top1: float
    fp32_top5: float
    int8_top1: float
    int8_top5: float
    full_set: bool

    def figures(self) -> dict:
        return {"eval_images": self.images, "fp32_top1": round(100 * self.fp32_top1, 3),
                "fp32_top5": round(100 * self.fp32_top5, 3), "int8_top1": round(100 * self.int8_top1, 3),
                "int8_top5": round(100 * self.int8_top5, 3),
                "top1_drop_points": round(100 * (self.fp32_top1 - self.int8_top1), 3)}


def judge_labelled(m: Labelled, family: str, *, subject: str, where: str, explain=None) -> dict:
    """MLPerf's 99% of fp32 top-1 and the family's absolute drop, widened on a subset."""
    rel = tolerance(SECTION, "mlperf_relative_top1")
    drop_points = tolerance(SECTION, f"max_top1_drop_{family}")
    widen = 0.0 if m.full_set else binomial_halfwidth(m.int8_top1, m.images)
    floor_rel = rel * m.fp32_top1 - widen
    floor_abs = m.fp32_top1 - drop_points / 100.0 - widen
    need = max(floor_rel, floor_abs)
    figs = {**m.figures(), "required_int8_top1": round(100 * need, 3), "binomial_widening_points": round(100 * widen, 3),
            "max_top1_drop_points": drop_points}
    if m.int8_top1 < need:
        subset = (f"; widened by the 95% binomial half-width {100 * widen:.2f} points because only {m.images} of "
                  f"{IMAGENET_VAL_IMAGES} validation images were evaluated") if widen else ""
        cause = (f"int8 top-1 falls {100 * (m.fp32_top1 - m.int8_top1):.2f} points below fp32 "
                 f"({100 * m.fp32_top1:.2f} -> {100 * m.int8_top1:.2f}; top-5 {100 * m.fp32_top5:.2f} -> "
                 f"{100 * m.int8_top5:.2f}){subset}")
        extra = explain() if explain else None
        if extra:
            cause += f"; {extra}"
        raise CheckFailure(message(f"int8 top-1 of {subject}", f"{100 * m.int8_top1:.2f}%",
                                   f">= {100 * need:.2f}% (max of {rel:.0%} x fp32 {100 * m.fp32_top1:.2f}% and "
                                   f"fp32 - {drop_points} points{', each minus the binomial half-width' if widen else ''})",
                                   where, cause=cause), figs)
    return figs


# --- running the models on the eval set -------------------------------------------------

@dataclass
class EvalRun:
    fp32: np.ndarray
    fp32_noisy: np.ndarray | None
    labels: np.ndarray | None
    seconds_fp32: float
    origin: str


_FP32_RUNS: dict[tuple, EvalRun] = {}


def _eval_batches(lab, card):
    """(NCHW float32 numpy, labels or None) batches of the eval split: in memory for the
    embedded set (shared with other suites), streamed for an ImageNet folder."""
    if lab.uses_real_data:
        for x, samples in lab.iter_batches(card, "eval", batch_size=EVAL_BATCH):
            yield x.numpy(), np.array([s.label for s in samples])
    else:
        x, samples = lab.inputs(card, "eval")
        x = x.numpy()
        labels = np.array([s.label for s in samples]) if samples and all(s.label is not None for s in samples) else None
        for i in range(0, len(x), EVAL_BATCH):
            yield x[i:i + EVAL_BATCH], (labels[i:i + EVAL_BATCH] if labels is not None else None)


def fp32_run(lab, card, fp32_path: Path, with_noise: bool) -> EvalRun:
    """fp32 logits (and noisy-input logits for the floor) on the eval set, once per session."""
    key = (qmod.cached_file_digest(fp32_path), card.id, lab.images("eval").digest(), with_noise)
    if key not in _FP32_RUNS:
        sess = rt.session(fp32_path, threads=lab.settings.threads)
        levels = int(tolerance(SECTION, "noise_grey_levels"))
        outs, noisy, labels = [], [], []
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(_eval_batches(lab, card)):
            outs.append(rt.run(sess, x))
            if with_noise:
                noisy.append(rt.run(sess, grey_level_noise(x, card.preprocess.std, levels, seed=i)))
            if y is not None:
                labels.append(y)
        _FP32_RUNS[key] = EvalRun(np.concatenate(outs), np.concatenate(noisy) if with_noise else None,
                                  np.concatenate(labels) if labels else None, time.perf_counter() - t0,
                                  lab.images("eval").origin)
    return _FP32_RUNS[key]


def int8_logits(lab, card, int8_path: Path) -> tuple[np.ndarray, float]:
    sess = rt.session(int8_path, threads=lab.settings.threads)
    t0 = time.perf_counter()
    out = np.concatenate([rt.run(sess, x) for x, _ in _eval_batches(lab, card)])
    return out, time.perf_counter() - t0


def has_labels(lab, card) -> bool:
    """Accuracy means something only with labelled images *and* real weights."""
    return lab.images("eval").labelled and lab.checkpoint_for(card) is not None


# --- the check the suite calls ----------------------------------------------------------

@dataclass
class Subject:
    """The int8 model under test and its fp32 reference."""

    int8: Path
    fp32: Path
    describe: str
    quant: qmod.QuantResult | None = None  # when zooconform made it
    float_for_report: Path | None = None   # the float model whose tensor names the int8 one keeps


def subject_for(lab, card, method: str) -> Subject:
    """The manifest's ``int8_onnx`` (against the manifest's ``onnx`` or our export of the
    reference) when given; else zooconform's own int8 model by ``method``."""
    fp32 = qmod.fp32_source(lab, card)
    user = lab.artifacts(card).get("int8_onnx")
    if user is not None:
        return Subject(user, fp32, f"manifest int8_onnx {user.name} of {card.id}",
                       float_for_report=qmod.preprocessed(lab, fp32))
    res = qmod.quantized_result(lab, card, method, fp32=fp32)
    return Subject(res.path, fp32, f"int8 ({method}) {card.id}", quant=res,
                   float_for_report=qmod.preprocessed(lab, fp32))


def check_int8_matches_fp32(lab, card, method: str, record, subject: Subject | None = None) -> None:
    """The tolerance: labelled accuracy when the run has labels and weights, else the noise floor."""
    subject = subject or subject_for(lab, card, method)
    if subject.quant is not None:
        q = subject.quant
        record(calibration=method, calib_images=q.calib_images, calib_source=q.calib_source or "embedded calib split",
               seconds_quant_preprocess=round(q.seconds_preprocess, 2), seconds_quantize=round(q.seconds_quantize, 2),
               **{f"calib_{k}": v for k, v in q.extra.items()})
    else:
        record(int8_source=str(subject.int8))
    labelled = has_labels(lab, card)
    ref = fp32_run(lab, card, subject.fp32, with_noise=not labelled)
    out, seconds_int8 = int8_logits(lab, card, subject.int8)
    record(seconds_eval_fp32=round(ref.seconds_fp32, 2), seconds_eval_int8=round(seconds_int8, 2),
           eval_origin=ref.origin, mode="labelled" if labelled else "noise-floor")
    where = f"{subject.int8} vs fp32 {subject.fp32.name} on {len(out)} {ref.origin} images"

    def explain() -> str:
        try:
            rep = layer_report_for(lab, card, subject, record)
        except Exception as e:  # the verdict stands; the report is a diagnosis
            return f"layer report unavailable ({type(e).__name__}: {str(e)[:120]})"
        return rep.summary()

    if labelled:
        y = ref.labels
        m = Labelled(len(y), topk_accuracy(ref.fp32, y, 1), topk_accuracy(ref.fp32, y, 5),
                     topk_accuracy(out, y, 1), topk_accuracy(out, y, 5),
                     full_set=len(y) >= IMAGENET_VAL_IMAGES - calibration_images_taken(lab))
        record(**m.figures())
        record(**judge_labelled(m, card.family, subject=subject.describe, where=where, explain=explain))
    else:
        m = label_free_figures(ref.fp32, out, ref.fp32_noisy)
        record(**m.figures())
        record(**judge_label_free(m, subject=subject.describe, where=where, explain=explain))


def calibration_images_taken(lab) -> int:
    """Validation images set aside for calibration: the rest is the whole evaluable set."""
    return len(lab.images("calib")) if lab.uses_real_data else 0


# --- the layer report -------------------------------------------------------------------

@dataclass
class TensorError:
    name: str
    kind: str            # "activation" | "weight"
    depth: float         # producer position in the float graph, 0 (input) .. 1 (output)
    local_db: float      # SQNR of the QDQ pair itself (its input vs its dequantized output)
    xmodel_db: float | None = None  # SQNR of the float model's tensor vs the int8 model's (accumulated)
    scale: str = ""      # the scale initializer of the pair
    node: str = ""       # the float graph's node producing the activation / consuming the weight


@dataclass
class LayerReport:
    tensors: list[TensorError]
    images: int
    logits_db: float | None = None
    unmatched: int = 0
    notes: list[str] = field(default_factory=list)

    def activations(self) -> list[TensorError]:
        return [t for t in self.tensors if t.kind == "activation"]

    def weights(self) -> list[TensorError]:
        return [t for t in self.tensors if t.kind == "weight"]

    def worst(self, kind: str = "activation", n: int = WORST_SHOWN) -> list[TensorError]:
        return sorted((t for t in self.tensors if t.kind == kind), key=lambda t: t.local_db)[:n]

    def by_depth(self, bins: int = DEPTH_BINS) -> list[dict]:
        """Median local and accumulated SQNR of the activations in equal depth bands."""
        acts = self.activations()
        rows = []
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            band = [t for t in acts if lo <= t.depth < hi or (b == bins - 1 and t.depth == 1.0)]
            if not band:
                continue
            xm = [t.xmodel_db for t in band if t.xmodel_db is not None]
            rows.append({"depth": f"{lo:.1f}-{hi:.1f}", "tensors": len(band),
                         "local_db_median": round(float(np.median([t.local_db for t in band])), 1),
                         "local_db_min": round(float(min(t.local_db for t in band)), 1),
                         "xmodel_db_median": round(float(np.median(xm)), 1) if xm else None})
        return rows

    def summary(self) -> str:
        worst = "; ".join(f"{t.name} {t.local_db:.1f} dB at depth {t.depth:.2f}" for t in self.worst())
        depth = ", ".join(f"{r['depth']}: {r['xmodel_db_median'] if r['xmodel_db_median'] is not None else r['local_db_median']} dB"
                          for r in self.by_depth())
        text = f"worst QDQ tensors (local SQNR): {worst}; accumulated SQNR by depth: {depth}"
        if self.logits_db is not None:
            text += f"; logits SQNR {self.logits_db:.1f} dB"
        return text

    def figures(self) -> dict:
        figs = {"report_images": self.images, "sqnr_by_depth": self.by_depth(),
                "worst_activations": [{"tensor": t.name, "local_db": round(t.local_db, 1),
                                       "xmodel_db": None if t.xmodel_db is None else round(t.xmodel_db, 1),
                                       "depth": round(t.depth, 3)} for t in self.worst()],
                "worst_weights": [{"tensor": t.name, "node": t.node, "sqnr_db": round(t.local_db, 1)}
                                  for t in self.worst("weight")],
                "qdq_activation_pairs": len(self.activations()), "quantized_weights": len(self.weights())}
        if self.activations():
            figs["min_activation_sqnr_db"] = round(min(t.local_db for t in self.activations()), 1)
            figs["median_activation_sqnr_db"] = round(float(np.median([t.local_db for t in self.activations()])), 1)
        if self.weights():
            figs["min_weight_sqnr_db"] = round(min(t.local_db for t in self.weights()), 1)
        if self.logits_db is not None:
            figs["logits_sqnr_db"] = round(self.logits_db, 1)
        if self.unmatched:
            figs["pairs_without_float_tensor"] = self.unmatched
        return figs


def qdq_pairs(model) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Activation QDQ pairs (input tensor, dequantized output, scale name) and quantized
    weights (dequantized output, scale name), found by graph structure, not by names."""
    inits = {i.name for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    acts, weights = [], []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            for d in consumers.get(node.output[0], []):
                if d.op_type == "DequantizeLinear":
                    acts.append((node.input[0], d.output[0], node.input[1]))
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weights.append((node.output[0], node.input[1]))
    return acts, weights


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """DequantizeLinear, per tensor or per axis (vectorised; ORT's debug helper is O(C^2))."""
    q = q.astype(np.float64)
    scale = np.asarray(scale, np.float64)
    zp = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point, np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def weight_errors(float_model, int8_model, weights, sqnr) -> list[tuple[str, float, str]]:
    """(float weight name, SQNR dB of its dequantized int8 copy, scale name) per quantized weight.

    ORT names a quantized weight ``<float name>_quantized``; the float original is looked
    up by that name (a foreign file's weights without it are skipped)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in int8_model.graph.initializer}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    producer = {o: n for n in int8_model.graph.node for o in n.output}
    out = []
    for dq_out, scale_name in weights:
        node = producer[dq_out]
        qname = node.input[0]
        fname = qname[:-len("_quantized")] if qname.endswith("_quantized") else qname
        if fname not in float_inits or scale_name not in inits:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        deq = dequantize(numpy_helper.to_array(inits[qname]), numpy_helper.to_array(inits[scale_name]), zp, axis)
        ref = numpy_helper.to_array(float_inits[fname]).astype(np.float64)
        if deq.shape != ref.shape:
            continue
        if not np.any(ref) and not np.any(deq):
            continue  # an all-zero tensor (a zero conv bias) is exact; its SQNR is undefined (0/0)
        out.append((fname, float(sqnr(ref, deq)), scale_name))
    return out


def layer_report(float_path: Path, int8_path: Path, x: np.ndarray, batch: int = 2) -> LayerReport:
    """Per-tensor SQNR of the int8 model: each QDQ pair's own error, the accumulated error
    against the float model, and each quantized weight against its float original.

    ``float_path`` must be the float model the int8 one was made from (tensor names kept):
    for zooconform's models the ``quant_pre_process`` output.
    """
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_signal_to_quantization_noice_ratio,
                                                         modify_model_output_intermediate_tensors)

    from .quantize import ArrayCalibrationReader, _quiet

    int8_model = onnx.load(str(int8_path))
    acts, weights = qdq_pairs(int8_model)
    float_model = onnx.load(str(float_path), load_external_data=False)
    order = {}
    for i, node in enumerate(float_model.graph.node):
        for o in node.output:
            order[o] = i
    n_nodes = max(len(float_model.graph.node), 1)
    notes = []
    with tempfile.TemporaryDirectory(prefix="zc-qdq-") as tmp, _quiet():
        aug_q, aug_f = Path(tmp) / "int8.aug.onnx", Path(tmp) / "float.aug.onnx"
        modify_model_output_intermediate_tensors(str(int8_path), str(aug_q))
        modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
        q_acts = collect_activations(str(aug_q), ArrayCalibrationReader(x, batch=batch))
        f_acts = collect_activations(str(aug_f), ArrayCalibrationReader(x, batch=batch))
    # outputs of the models themselves (not saved by the augmentation): run both once
    out_f = rt.run(rt.session(float_path, optimization="basic"), x)
    out_q = rt.run(rt.session(int8_path, optimization="basic"), x)

    def sums(a, b):
        a = np.concatenate([np.asarray(v, np.float64).ravel() for v in a])
        b = np.concatenate([np.asarray(v, np.float64).ravel() for v in b])
        return float(np.sum(a * a)), float(np.sum((a - b) ** 2))

    # ORT drops a Relu whose output is asymmetrically quantized: the pair then takes the
    # conv output and its zero point at the range's bottom *is* the ReLU. Its own error is
    # measured against relu(input), or every such pair would read ~3 dB.
    float_op = {o: n.op_type for n in float_model.graph.node for o in n.output}
    producer_name = {o: n.name for n in float_model.graph.node for o in n.output}
    int8_op = {o: n.op_type for n in int8_model.graph.node for o in n.output}

    # A foreign int8 file (other tool, other float graph) may not share our tensor names:
    # there a pair whose zero point sits at the bottom of its type's range, fed by a node
    # other than Relu, is taken to be a folded ReLU.
    inits = {i.name: i for i in int8_model.graph.initializer}
    q_zero_point = {n.input[0]: n.input[2] for n in int8_model.graph.node
                    if n.op_type == "QuantizeLinear" and len(n.input) > 2}

    def folds_relu(name) -> bool:
        if name in float_op:
            return float_op[name] == "Relu" and int8_op.get(name) != "Relu"
        zp = inits.get(q_zero_point.get(name, ""))
        if zp is None or int8_op.get(name) == "Relu":
            return False
        from onnx import numpy_helper

        value = numpy_helper.to_array(zp)
        return value.size == 1 and int(value.ravel()[0]) == int(np.iinfo(value.dtype).min)

    def pair_input(name, arrays):
        return [np.maximum(a, 0) for a in arrays] if folds_relu(name) else arrays

    tensors: list[TensorError] = []
    unmatched = 0
    for pre, post, scale in acts:
        if pre not in q_acts or post not in q_acts:
            continue
        local = sqnr_db(*sums(pair_input(pre, q_acts[pre]), q_acts[post]))
        xmodel = None
        if pre in f_acts:
            xmodel = sqnr_db(*sums(f_acts[pre], q_acts[post]))
        else:
            unmatched += 1
        depth = order.get(pre, -1) + 1
        tensors.append(TensorError(pre, "activation", depth / n_nodes, local, xmodel, scale, producer_name.get(pre, "")))
    consumer = {}
    for i, node in enumerate(float_model.graph.node):
        for name in node.input:
            consumer.setdefault(name, (i, node.name))
    for name, db, scale in weight_errors(float_model, int8_model, weights, compute_signal_to_quantization_noice_ratio):
        i, node_name = consumer.get(name, (-1, ""))
        tensors.append(TensorError(name, "weight", (i + 1) / n_nodes, db, None, scale, node_name))
    logits_db = sqnr_db(*sums([out_f], [out_q]))
    return LayerReport(tensors, len(x), logits_db, unmatched, notes)


_REPORTS: dict[tuple, LayerReport] = {}


def layer_report_for(lab, card, subject: Subject, record) -> LayerReport:
    """The layer report on the first few eval images (cached per int8 file), recorded."""
    key = (qmod.cached_file_digest(subject.int8), card.id)
    if key not in _REPORTS:
        x, _ = lab.inputs(card, "eval", limit=None) if not lab.uses_real_data else next(
            (b.numpy(), s) for b, s in lab.iter_batches(card, "eval", batch_size=REPORT_IMAGES))
        x = np.asarray(x)[:: max(1, len(x) // REPORT_IMAGES)][:REPORT_IMAGES]
        float_path = subject.float_for_report or subject.fp32
        t0 = time.perf_counter()
        rep = layer_report(float_path, subject.int8, x)
        rep.notes.append(f"seconds {time.perf_counter() - t0:.1f}")
        _REPORTS[key] = rep
    rep = _REPORTS[key]
    record(**rep.figures())
    return rep


def check_layer_sqnr(lab, card, method: str, record, subject: Subject | None = None) -> None:
    """Every QDQ pair and quantized weight keeps a minimum SQNR; the weakest are named."""
    subject = subject or subject_for(lab, card, method)
    rep = layer_report_for(lab, card, subject, record)
    judge_layer_report(rep, subject=subject.describe, where=f"{subject.int8}")


def judge_layer_report(rep: LayerReport, *, subject: str, where: str) -> None:
    if not rep.activations():
        raise CheckFailure(message(f"QDQ activation pairs in {subject}", 0, "> 0", where,
                                   cause="the file holds no QuantizeLinear->DequantizeLinear pair: not a QDQ int8 model"),
                           rep.figures())
    min_act = tolerance(SECTION, "min_activation_sqnr_db")
    min_w = tolerance(SECTION, "min_weight_sqnr_db")
    low_acts = [t for t in rep.worst("activation", n=len(rep.tensors)) if t.local_db < min_act]
    low_w = [t for t in rep.worst("weight", n=len(rep.tensors)) if t.local_db < min_w]
    if low_acts:
        t = low_acts[0]
        raise CheckFailure(message(
            f"SQNR of the QDQ pair on tensor '{t.name}' of {subject}", f"{t.local_db:.1f} dB", f">= {min_act} dB",
            f"{where} QuantizeLinear/DequantizeLinear of '{t.name}', scale '{t.scale}', depth {t.depth:.2f}",
            cause=f"its scale/zero-point do not fit the tensor's range (clipping or too coarse a step); "
                  f"{len(low_acts)} pair(s) below {min_act} dB: "
                  + ", ".join(f"{u.name} {u.local_db:.1f} dB" for u in low_acts[:WORST_SHOWN])),
            rep.figures())
    if low_w:
        t = low_w[0]
        raise CheckFailure(message(
            f"SQNR of quantized weight '{t.name}' (of node '{t.node}') of {subject}", f"{t.local_db:.1f} dB",
            f">= {min_w} dB", f"{where} DequantizeLinear of '{t.name}', scale '{t.scale}', depth {t.depth:.2f}",
            cause=f"the dequantized weight does not reproduce the float weight (wrong scale?); {len(low_w)} weight(s) "
                  f"below {min_w} dB: " + ", ".join(f"{u.name} {u.local_db:.1f} dB" for u in low_w[:WORST_SHOWN])),
            rep.figures())


# --- the calibration set ----------------------------------------------------------------

def check_calibration_split(lab, card, record) -> None:
    """Calibration images never overlap evaluation images (not even views of one source
    photo); on labelled data every class is represented, as the seeds prescribe."""
    calib, ev = lab.images("calib"), lab.images("eval")
    shared_names = sorted({s.name for s in calib.samples} & {s.name for s in ev.samples})
    shared_groups = sorted({s.group for s in calib.samples} & {s.group for s in ev.samples})
    record(calib_images=len(calib), eval_images=len(ev), calib_origin=calib.origin, eval_origin=ev.origin)
    where = f"harness/data.py split of {calib.origin} / {ev.origin}"
    check(not shared_names, "images in both the calibration and the evaluation set", len(shared_names), 0, where,
          cause=f"calibrating on evaluation images flatters the int8 model (first: {shared_names[:3]})")
    check(not shared_groups, "source photos with views in both the calibration and the evaluation set",
          len(shared_groups), 0, where,
          cause=f"views of one photo on both sides leak the evaluation images into calibration (first: {shared_groups[:3]})")
    if calib.labelled:
        classes = len({s.label for s in calib.samples})
        available = len({s.label for s in calib.samples + ev.samples})
        need = min(available, len(calib))
        record(calib_classes=classes, classes_available=available)
        check(classes >= need, f"classes represented in the {len(calib)} calibration images", classes, f">= {need}",
              where, cause="the seeds require every class in the ~1000 calibration images; a class-skewed "
                           "calibration set under-ranges the activations other classes drive")
