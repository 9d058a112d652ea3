"""The per-tensor report of a QDQ int8 file: for every QuantizeLinear->DequantizeLinear pair and
every quantized weight, its own SQNR and the accumulated SQNR against the float model, with
depth in the graph, so an int8 failure names the tensor and scale that lost the signal."""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import onnxfile
from ..runtimes import ort as rt  # QDQ tooling: ORT's own

WORST_SHOWN = 5
DEPTH_BINS = 5


def sqnr_db(signal_sq: float, noise_sq: float) -> float:
    """10*log10(sum x^2 / sum (x - y)^2): ORT's ``compute_signal_to_quantization_noice_ratio``
    (20*log10 of the norm ratio, eps-clamped) computed from accumulated sums."""
    eps = float(np.finfo(np.float64).eps)
    return float(20 * np.log10(max(np.sqrt(signal_sq), eps) / max(np.sqrt(noise_sq), eps)))


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> LayerReport:
        d = json.loads(text)
        return cls([TensorError(**t) for t in d.pop("tensors")], **d)

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
        def median_db(r: dict) -> float:
            return r["xmodel_db_median"] if r["xmodel_db_median"] is not None else r["local_db_median"]

        depth = ", ".join(f"{r['depth']}: {median_db(r)} dB" for r in self.by_depth())
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
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        modify_model_output_intermediate_tensors,
    )

    from .quantize import ArrayCalibrationReader, _quiet

    int8_model = onnxfile.load_checked(int8_path)
    acts, weights = qdq_pairs(int8_model)
    float_model = onnxfile.load_checked_header(float_path)
    order = {}
    for i, node in enumerate(float_model.graph.node):
        for o in node.output:
            order[o] = i
    n_nodes = max(len(float_model.graph.node), 1)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="zc-qdq-") as tmp, _quiet():
        aug_q, aug_f = Path(tmp) / "int8.aug.onnx", Path(tmp) / "float.aug.onnx"
        modify_model_output_intermediate_tensors(str(int8_path), str(aug_q))
        modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
        q_name, f_name = onnxfile.input_name_of(int8_model, int8_path), onnxfile.input_name_of(float_model, float_path)
        q_acts = collect_activations(str(aug_q), ArrayCalibrationReader(x, batch=batch, input_name=q_name))
        f_acts = collect_activations(str(aug_f), ArrayCalibrationReader(x, batch=batch, input_name=f_name))
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
    consumer: dict[str, tuple[int, str]] = {}
    for i, node in enumerate(float_model.graph.node):
        for name in node.input:
            consumer.setdefault(name, (i, node.name))
    for name, db, scale in weight_errors(float_model, int8_model, weights, compute_signal_to_quantization_noice_ratio):
        i, node_name = consumer.get(name, (-1, ""))
        tensors.append(TensorError(name, "weight", (i + 1) / n_nodes, db, None, scale, node_name))
    logits_db = sqnr_db(*sums([out_f], [out_q]))
    return LayerReport(tensors, len(x), logits_db, unmatched, notes)
