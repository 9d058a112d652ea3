"""The per-tensor report of a QDQ int8 file: for every QuantizeLinear->DequantizeLinear pair and
every quantized weight, its own SQNR and the accumulated SQNR against the float model, with
depth in the graph, so an int8 failure names the tensor and scale that lost the signal."""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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

    The sums are taken inside one comparison graph (:func:`comparison_graph`) that returns
    scalars only, so memory stays that of running the two models: collecting every tensor of
    both graphs (ORT's ``collect_activations``) took a resnest269 worker past 19 GB.
    Both run as float simulations (ORT_DISABLE_ALL), as the int8 verdict does.
    """
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    from .quantize import _quiet

    int8_model = onnxfile.load_checked(int8_path)
    acts, weights = qdq_pairs(int8_model)
    float_model = onnxfile.load_checked_header(float_path)
    order = {}
    for i, node in enumerate(float_model.graph.node):
        for o in node.output:
            order[o] = i
    n_nodes = max(len(float_model.graph.node), 1)
    notes: list[str] = []
    float_op = {o: n.op_type for n in float_model.graph.node for o in n.output}
    producer_name = {o: n.name for n in float_model.graph.node for o in n.output}
    int8_op = {o: n.op_type for n in int8_model.graph.node for o in n.output}

    # ORT drops a Relu whose output is asymmetrically quantized: the pair then takes the
    # conv output and its zero point at the range's bottom *is* the ReLU. Its own error is
    # measured against relu(input), or every such pair would read ~3 dB.
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

    pairs = [(pre, post) for pre, post, _ in acts]
    graph, sums = comparison_graph(float_model, int8_model, pairs, {pre for pre, _ in pairs if folds_relu(pre)},
                                   float_path=float_path, int8_path=int8_path)
    if not graph.float_included:
        notes.append(graph.float_excluded)
    totals = dict.fromkeys(sums, 0.0)
    with tempfile.TemporaryDirectory(prefix="zc-qdq-") as tmp, _quiet():
        session = rt.session(graph.save(Path(tmp)), optimization="none", in_listed_order=True)
        graph.model = None  # ORT holds its own copy
        names = [o.name for o in session.get_outputs()]
        for start in range(0, len(x), batch):
            xb = np.ascontiguousarray(x[start:start + batch], dtype=np.float32)
            for name, value in zip(names, session.run(names, {graph.input_name: xb}), strict=True):
                totals[name] += float(value)
        del session
        logits_db = sqnr_db(*(totals[n] for n in sums.logits)) if sums.logits else _logits_apart(float_path, int8_path, x)

    tensors: list[TensorError] = []
    unmatched = 0
    for (pre, _post, scale), local, accumulated in zip(acts, sums.local, sums.accumulated, strict=True):
        if local is None:
            continue
        xmodel = sqnr_db(*(totals[n] for n in accumulated)) if accumulated else None
        unmatched += xmodel is None
        float_name = graph.float_name_of(pre)
        depth = order.get(float_name, -1) + 1
        tensors.append(TensorError(pre, "activation", depth / n_nodes, sqnr_db(*(totals[n] for n in local)), xmodel,
                                   scale, producer_name.get(float_name, "")))
    consumer: dict[str, tuple[int, str]] = {}
    for i, node in enumerate(float_model.graph.node):
        for name in node.input:
            consumer.setdefault(name, (i, node.name))
    for name, db, scale in weight_errors(float_model, int8_model, weights, compute_signal_to_quantization_noice_ratio):
        i, node_name = consumer.get(name, (-1, ""))
        tensors.append(TensorError(name, "weight", (i + 1) / n_nodes, db, None, scale, node_name))
    return LayerReport(tensors, len(x), logits_db, unmatched, notes)


def _logits_apart(float_path: Path, int8_path: Path, x: np.ndarray) -> float:
    """Logits SQNR from two plain runs, for a float graph the comparison graph cannot hold."""
    out_f = rt.run(rt.session(float_path, optimization="none"), x)
    out_q = rt.run(rt.session(int8_path, optimization="none"), x)
    f, q = np.asarray(out_f, np.float64), np.asarray(out_q, np.float64)
    return sqnr_db(float(np.sum(f * f)), float(np.sum((f - q) ** 2)))


# --- the comparison graph ---------------------------------------------------------------------

FLOAT_PREFIX = "zc.float/"   # the float graph's names inside the comparison graph
# ORT renames a quantized graph output's producer tensor to '<output>_QuantizeLinear_Input'
GRAPH_OUTPUT_SUFFIX = "_QuantizeLinear_Input"


@dataclass
class SumNames:
    """Output names of the comparison graph, each a float64 scalar: per pair, (signal, noise) of
    its own error (``local``) and of the error against the float model (``accumulated``; None
    without a float counterpart); ``logits`` the same for the models' outputs (None when the
    float graph is not included)."""
    local: list[tuple[str, str] | None]
    accumulated: list[tuple[str, str] | None]
    logits: tuple[str, str] | None

    def __iter__(self):
        for pair in [*self.local, *self.accumulated, self.logits]:
            if pair:
                yield from pair


@dataclass
class ComparisonGraph:
    model: Any                  # onnx.ModelProto; None once a session holds it
    input_name: str
    float_excluded: str = ""    # why the float model is not in it ("" when it is)
    float_names: dict = field(default_factory=dict)  # int8 tensor -> float tensor, where they differ

    def float_name_of(self, int8_name: str) -> str:
        return self.float_names.get(int8_name, int8_name)

    @property
    def float_included(self) -> bool:
        return not self.float_excluded

    def save(self, folder: Path) -> Path:
        return onnxfile.save_model(self.model, folder / "comparison.onnx")


def _float_graph_unfit(float_model, int8_model) -> str:
    """Why the float graph cannot share a graph with the int8 one ('' when it can)."""
    q_opsets = {o.domain or "ai.onnx": o.version for o in int8_model.opset_import}
    for o in float_model.opset_import:
        domain = o.domain or "ai.onnx"
        if domain in q_opsets and q_opsets[domain] != o.version:
            return (f"accumulated SQNR not measured: the float model imports {domain} opset {o.version}, the int8 "
                    f"file opset {q_opsets[domain]} (one graph cannot hold both)")
    if any(a.type in (5, 10) for n in float_model.graph.node for a in n.attribute):  # GRAPH, GRAPHS
        return "accumulated SQNR not measured: the float model has subgraphs (If/Loop/Scan)"
    return ""


def comparison_graph(float_model, int8_model, pairs: list[tuple[str, str]], relu_folded: set[str], *,
                     float_path: Path, int8_path: Path) -> tuple[ComparisonGraph, SumNames]:
    """One graph holding the int8 model, the float model (its names prefixed) on the same input,
    and per QDQ pair the float64 sums of squares that its SQNR needs; its only outputs are those
    scalars.

    The nodes are listed pair by pair, each pair's float and int8 producers just before its
    sums, and run in that order (``in_listed_order``): a tensor lives until its last sum, as in
    running each model alone, instead of every tensor until the end."""
    from onnx import TensorProto, helper

    q_in, f_in = onnxfile.input_name_of(int8_model, int8_path), onnxfile.input_name_of(float_model, float_path)
    unfit = _float_graph_unfit(float_model, int8_model)
    q_made = {o for n in int8_model.graph.node for o in n.output}
    f_made = {o for n in float_model.graph.node for o in n.output}

    def f_renamed(name: str) -> str:
        return q_in if name == f_in else (FLOAT_PREFIX + name if name else name)

    nodes = list(int8_model.graph.node)
    initializers = list(int8_model.graph.initializer)
    float_names: dict[str, str] = {}
    if not unfit:
        for index, node in enumerate(float_model.graph.node):
            copy = type(node)()
            copy.CopyFrom(node)
            copy.input[:] = [f_renamed(i) for i in node.input]
            copy.output[:] = [f_renamed(o) for o in node.output]
            copy.name = FLOAT_PREFIX + (node.name or f"#{index}")  # onnxsim and others leave names empty
            nodes.append(copy)
        for init in float_model.graph.initializer:
            copy = type(init)()
            copy.CopyFrom(init)
            copy.name = FLOAT_PREFIX + init.name
            initializers.append(copy)
        for pre, _ in pairs:
            if pre not in f_made and pre.endswith(GRAPH_OUTPUT_SUFFIX) and pre[:-len(GRAPH_OUTPUT_SUFFIX)] in f_made:
                float_names[pre] = pre[:-len(GRAPH_OUTPUT_SUFFIX)]

    extra: list = []
    as_double: dict[str, str] = {}

    def double(name: str) -> str:
        if name not in as_double:
            as_double[name] = f"zc.f64/{len(as_double)}"
            extra.append(helper.make_node("Cast", [name], [as_double[name]], to=TensorProto.DOUBLE,
                                          name=as_double[name]))
        return as_double[name]

    outputs: list[str] = []

    def sums_of(reference: str, measured: str) -> tuple[str, str]:
        k = len(outputs) // 2
        ref = double(reference)
        diff = f"zc.diff/{k}"
        extra.append(helper.make_node("Sub", [ref, double(measured)], [diff], name=diff))
        for name, of in ((f"zc.signal/{k}", ref), (f"zc.noise/{k}", diff)):
            extra.append(helper.make_node("ReduceSumSquare", [of], [name], keepdims=0, name=name))
            outputs.append(name)
        return outputs[-2], outputs[-1]

    # each pair's sums are appended right after the nodes they need (see ordering below)
    groups: list[tuple[int, int]] = []  # the extra nodes [first, end) of each pair's sums
    local: list[tuple[str, str] | None] = []
    accumulated: list[tuple[str, str] | None] = []
    for pre, post in pairs:
        if not ((pre in q_made or pre == q_in) and post in q_made):
            local.append(None)
            accumulated.append(None)
            continue
        first = len(extra)
        reference = pre
        if pre in relu_folded:
            reference = f"zc.relu/{len(local)}"
            extra.append(helper.make_node("Relu", [pre], [reference], name=reference))
        local.append(sums_of(reference, post))
        float_pre = float_names.get(pre, pre)
        if not unfit and (float_pre in f_made or pre == q_in):
            accumulated.append(sums_of(q_in if pre == q_in else FLOAT_PREFIX + float_pre, post))
        else:
            accumulated.append(None)
        groups.append((first, len(extra)))
    logits = None
    if not unfit:
        first = len(extra)
        logits = sums_of(f_renamed(float_model.graph.output[0].name), int8_model.graph.output[0].name)
        groups.append((first, len(extra)))

    model = helper.make_model(
        helper.make_graph(_listed_pair_by_pair(nodes, extra, groups), "zooconform_layer_report",
                          [i for i in int8_model.graph.input if i.name == q_in],
                          [helper.make_tensor_value_info(n, TensorProto.DOUBLE, []) for n in outputs],
                          initializers),
        opset_imports=_merged_opsets(float_model, int8_model, unfit))
    model.ir_version = max(int8_model.ir_version, 0 if unfit else float_model.ir_version)
    return (ComparisonGraph(model, q_in, unfit, float_names),
            SumNames(local, accumulated, logits))


def _merged_opsets(float_model, int8_model, unfit: str) -> list:
    merged = {o.domain: o for o in int8_model.opset_import}
    if not unfit:
        for o in float_model.opset_import:
            merged.setdefault(o.domain, o)
    return list(merged.values())


def _listed_pair_by_pair(nodes: list, extra: list, groups: list[tuple[int, int]]) -> list:
    """``nodes`` (both models) and ``extra`` (the sums) in one topological order: for each group of
    sums, the not yet listed producers of its inputs (depth first), then the group; then whatever
    is left. Iterative: a 269-layer graph is deeper than Python's recursion limit."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    made_by_extra = {o for n in extra for o in n.output}
    listed: list = []
    done = [False] * len(nodes)

    def list_producers_of(tensors) -> None:
        stack = [(producer[t], False) for t in tensors if t in producer]
        while stack:
            i, expanded = stack.pop()
            if done[i]:
                continue
            if expanded:
                done[i] = True
                listed.append(nodes[i])
                continue
            stack.append((i, True))
            stack.extend((producer[t], False) for t in nodes[i].input if t in producer and not done[producer[t]])

    for first, end in groups:
        group = extra[first:end]
        list_producers_of([t for n in group for t in n.input if t not in made_by_extra])
        listed.extend(group)
    list_producers_of([o for n in nodes for o in n.output])
    return listed
