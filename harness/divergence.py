"""Find the first layer where an ONNX file departs from its PyTorch model.

The final logits only say *that* a file differs; a user needs *where*. Both sides are
opened up on the same image:

* ONNX Runtime: the output of chosen nodes is added to the graph's outputs, so one run
  returns every intermediate value.
* PyTorch: forward hooks record every module's output, in float32 and in float64 (the
  float64 run gives each layer its own noise floor).

Nodes are mapped to modules through the scope the exporters write:

* the legacy (TorchScript) exporter names a node ``/stage2/stage2.0/fuse_layers.0.1/
  fuse_layers.0.1.2/Resize``: one component per module scope, each the module's full name
  cut to its last non-numeric atom (``torch.onnx`` ``_unqualified_variable_name``);
* the dynamo exporter writes full module names into the node's ``pkg.torch.onnx.name_scopes``
  metadata.

A module's ONNX counterpart is the last node (graph order) inside its scope. Both exporters
fold an eval-mode BatchNorm into the Conv before it, so the folded Conv node carries the
Conv's scope (legacy) or the BN's (dynamo); a Conv whose output feeds straight into a BN is
therefore compared with the BN's output. Modules are walked in the order their forward
finished; the first one whose ONNX value departs beyond ``max(k * floor, minimum)`` is the
divergence. Files without scope information (hand-edited, other tools) fall back to value
matching: the first module whose output no ONNX value of the same shape reproduces.
"""
from __future__ import annotations

import ast
import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from .compare import rel_max_error

# ops whose outputs are shapes/indices, never activations worth comparing
_SHAPE_OPS = {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Range",
              "ConstantOfShape", "Slice", "Size", "Equal", "Where", "Expand"}
_UPSAMPLE_ONNX_MODE = {"nearest": "nearest", "bilinear": "linear", "linear": "linear",
                       "bicubic": "cubic", "trilinear": "linear"}


@dataclass
class Divergence:
    """Where an ONNX file first departs from its torch model (``module`` None: not mapped)."""

    module: str | None
    module_type: str | None
    node: str | None
    op_type: str | None
    rel_error: float
    tolerance: float
    floor: float
    compared: int
    last_match: str | None = None
    hint: str | None = None
    mode: str = "scope"  # scope | value | none
    details: dict = field(default_factory=dict)

    def where(self) -> str:
        if self.module is None and self.node is None:
            after = f" after module '{self.last_match}'" if self.last_match else ""
            return (f"no single layer departs ({self.compared} layers compared, all within tolerance); "
                    f"the difference arises{after} in the output nodes")
        mod = f"module '{self.module}' ({self.module_type})" if self.module else "an unmapped module"
        node = f"ONNX node '{self.node}' ({self.op_type})" if self.node else "no ONNX value reproduces it"
        after = f"; layers up to '{self.last_match}' match" if self.last_match else ""
        return (f"first diverging layer: {mod} = {node}: layer error {self.rel_error:.3g} "
                f"> {self.tolerance:.3g} ({self.compared} layers compared{after})")

    def figures(self) -> dict:
        return {"diverging_module": self.module, "diverging_module_type": self.module_type,
                "diverging_node": self.node, "diverging_op": self.op_type,
                "diverging_layer_error": self.rel_error, "diverging_layer_tolerance": self.tolerance,
                "diverging_layer_floor": self.floor, "layers_compared": self.compared,
                "last_matching_module": self.last_match, "divergence_mode": self.mode,
                "divergence_hint": self.hint}


# --- node -> module mapping ---------------------------------------------------------------

class ModuleIndex:
    """Resolve exporter scope components to full module names of one torch model."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self.by_suffix: dict[str, list[str]] = {}
        for name in self.modules:
            if not name:
                continue
            atoms = name.split(".")
            for i in range(len(atoms)):
                self.by_suffix.setdefault(".".join(atoms[i:]), []).append(name)

    def resolve_legacy(self, node_name: str) -> str | None:
        """``/a/a.0/conv/Conv_3`` -> ``a.0.conv``: each component lies below the previous one."""
        parts = [p for p in node_name.split("/") if p][:-1]  # the last part is the op
        path = ""
        for comp in parts:
            cands = [c for c in self.by_suffix.get(comp, ()) if not path or c.startswith(path + ".")]
            if not cands:
                # the exporter de-duplicates repeated scope names with a suffix (``conv_1``)
                base = comp.rsplit("_", 1)[0] if comp.rsplit("_", 1)[-1].isdigit() else None
                cands = [c for c in self.by_suffix.get(base or "", ()) if not path or c.startswith(path + ".")]
            if not cands:
                break
            path = min(cands, key=len)
        return path or None

    def resolve_dynamo(self, scopes: list[str]) -> str | None:
        for s in reversed(scopes):
            if s and s in self.modules:
                return s
        return None


def node_modules(model_proto, index: ModuleIndex) -> list[str | None]:
    """The module each node belongs to (None: outside every module / no scope written)."""
    out: list[str | None] = []
    for n in model_proto.graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        mod = None
        if "pkg.torch.onnx.name_scopes" in meta:
            try:
                mod = index.resolve_dynamo(list(ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])))
            except (ValueError, SyntaxError):
                mod = None
        elif n.name.startswith("/"):
            mod = index.resolve_legacy(n.name)
        out.append(mod)
    return out


# --- running both sides -------------------------------------------------------------------

@dataclass
class TorchTrace:
    order: list[str]  # modules in the order their forward finished (first call only)
    outputs: dict[str, np.ndarray]
    alias: dict[str, str]  # conv -> the BN that consumes its output directly


def trace_torch(model: nn.Module, x: torch.Tensor) -> TorchTrace:
    """Every module's (first) tensor output, copied at hook time (in-place ops follow)."""
    order: list[str] = []
    outputs: dict[str, np.ndarray] = {}
    alias: dict[str, str] = {}
    # tensor id -> (tensor, modules that returned it): a Sequential ending in a Conv returns
    # the Conv's very tensor, and both then stand for the folded Conv+BN node
    produced: dict[int, tuple[torch.Tensor, list[str]]] = {}
    handles = []

    def pre_hook(name):
        def fn(mod, args):
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and args and isinstance(args[0], torch.Tensor):
                src = produced.get(id(args[0]))
                if src is not None and src[0] is args[0] and any(
                        isinstance(model.get_submodule(p), nn.modules.conv._ConvNd) for p in src[1]):
                    for p in src[1]:
                        alias.setdefault(p, name)
        return fn

    def hook(name):
        def fn(mod, args, out):
            if isinstance(out, torch.Tensor):
                prev = produced.get(id(out))
                if prev is not None and prev[0] is out:
                    prev[1].append(name)
                else:
                    produced[id(out)] = (out, [name])
                if name not in outputs:
                    outputs[name] = out.detach().to(torch.float64 if out.dtype == torch.float64 else torch.float32
                                                    ).cpu().numpy().copy()
                    order.append(name)
        return fn

    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(pre_hook(name)))
        handles.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return TorchTrace(order, outputs, alias)


def _float_outputs(model_proto) -> set[str]:
    """Names of node outputs that carry float tensors (by ONNX shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model_proto)
        vi = list(inferred.graph.value_info) + list(inferred.graph.output)
        return {v.name for v in vi if v.type.tensor_type.elem_type in (1, 10, 11, 16)}
    except Exception:  # inference can fail on exotic files: keep every candidate
        return {o for n in model_proto.graph.node for o in n.output}


def run_with_intermediates(model_proto, names: list[str], x: np.ndarray, threads: int | None = None
                           ) -> dict[str, np.ndarray]:
    """Run ``model_proto`` on ``x`` returning the named intermediate values too."""
    from onnx import helper

    from . import onnxfile
    from .runtimes.ort import session

    m = copy.deepcopy(model_proto)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.ValueInfoProto(name=n))
    with tempfile.TemporaryDirectory(prefix="zc-div-") as d:
        path = onnxfile.save_model(m, Path(d) / "probe.onnx")
        sess = session(path, threads=threads)
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
        outs = sess.run(None, feed)
        return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def fixed_batch(model_proto) -> int | None:
    """The file's batch size when its input's first dimension is a fixed number."""
    inits = {i.name for i in model_proto.graph.initializer}
    inp = next(i for i in model_proto.graph.input if i.name not in inits)
    dims = inp.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def _fit_batch(x: np.ndarray, batch: int | None) -> np.ndarray:
    if batch is None or batch == len(x):
        return x
    reps = int(np.ceil(batch / len(x)))
    return np.concatenate([x] * reps)[:batch]


# --- the search ---------------------------------------------------------------------------

def first_divergence(model: nn.Module, onnx_path: Path | str, x: torch.Tensor, *, k: float, minimum: float,
                     model_proto=None, threads: int | None = None) -> Divergence:
    """The first module (forward order) whose ONNX counterpart departs beyond tolerance.

    ``x``: one or a few images (the worst image of the failing check is a good choice).
    Layer tolerance: ``max(k * floor, minimum)`` with ``floor`` the layer's own float32 vs
    float64 departure in torch.
    """
    from .onnxfile import load_checked

    proto = model_proto if model_proto is not None else load_checked(onnx_path)
    model = model.eval()
    xb = _fit_batch(x.detach().cpu().numpy().astype(np.float32), fixed_batch(proto))
    t32 = trace_torch(model, torch.from_numpy(xb))
    t64 = trace_torch(copy.deepcopy(model).double(), torch.from_numpy(xb).double())
    index = ModuleIndex(model)
    mods = node_modules(proto, index)
    nodes = list(proto.graph.node)
    unfolded_bn_aliases(t32, t64, nodes, mods)
    float_names = _float_outputs(proto)
    mapped = sum(1 for n, m in zip(nodes, mods) if m is not None and n.op_type not in _SHAPE_OPS)
    compute = sum(1 for n in nodes if n.op_type not in _SHAPE_OPS)
    if compute and mapped >= 0.5 * compute:
        div = _scope_search(model, proto, nodes, mods, t32, t64, xb, k, minimum, float_names, threads)
    else:
        div = _value_search(model, proto, nodes, t32, t64, xb, k, minimum, float_names, threads)
    training = training_mode_batchnorms(nodes)
    if training and not (div.hint and "training mode" in div.hint):
        # named wherever the search stopped: these nodes change every layer after them
        div.hint = "; ".join(h for h in (div.hint, _training_bn_note(training, nodes, mods)) if h)
    return div


def training_mode_batchnorms(nodes) -> list[int]:
    """Indices of BatchNormalization nodes that normalise with the batch's own statistics:
    ``training_mode=1`` (opset >= 14) or the extra mean/var outputs a training export writes
    (opset < 14, where the attribute does not exist)."""
    return [i for i, n in enumerate(nodes) if n.op_type == "BatchNormalization"
            and (_attr(n, "training_mode", 0) == 1 or len([o for o in n.output if o]) > 1)]


def _training_bn_note(found: list[int], nodes, mods) -> str:
    first = nodes[found[0]]
    mod = f" (module '{mods[found[0]]}')" if mods[found[0]] else ""
    return (f"{len(found)} BatchNormalization node(s) run in training mode (first: '{first.name or first.output[0]}'"
            f"{mod}, training_mode=1): they normalise each batch with its own statistics, not the running "
            "mean/var, so every output depends on the batch; the file was exported from a model in train() "
            "mode (torch.onnx.export(training=TrainingMode.TRAINING), timm onnx_export(training=True)): "
            "re-export after model.eval()")


def unfolded_bn_aliases(t32: TorchTrace, t64: TorchTrace, nodes, mods) -> None:
    """Drop the Conv -> BatchNorm aliases of BNs the file did not fold: the exporter folds an
    eval-mode BN into its Conv, but a training-mode export (or a file written with
    ``do_constant_folding=False``) keeps a BatchNormalization node of the BN's own scope, and
    that Conv's output is then the bare convolution, not the BN's."""
    unfolded = {m for n, m in zip(nodes, mods) if m is not None and n.op_type == "BatchNormalization"}
    if not unfolded:
        return
    for trace in (t32, t64):
        trace.alias = {c: b for c, b in trace.alias.items() if b not in unfolded}


def _exit_nodes(nodes, mods) -> dict[str, int]:
    """module -> index of the last node inside its scope (children's nodes count)."""
    exits: dict[str, int] = {}
    for i, (n, m) in enumerate(zip(nodes, mods)):
        if m is None or n.op_type in _SHAPE_OPS:
            continue
        atoms = m.split(".")
        for j in range(1, len(atoms) + 1):
            exits[".".join(atoms[:j])] = i
    return exits


def _layer_tol(ref32: np.ndarray, ref64: np.ndarray, k: float, minimum: float) -> tuple[float, float]:
    floor = rel_max_error(ref32, ref64)
    return max(k * floor, minimum), floor


def _scope_search(model, proto, nodes, mods, t32, t64, xb, k, minimum, float_names, threads) -> Divergence:
    exits = _exit_nodes(nodes, mods)
    # the graph output stands for the root module
    wanted = {}
    for name in t32.order:
        effective = t32.alias.get(name, name)
        i = exits.get(name)
        if name == "":
            continue
        if i is None or not nodes[i].output or nodes[i].output[0] not in float_names:
            continue
        wanted[name] = (i, effective)
    values = run_with_intermediates(proto, sorted({nodes[i].output[0] for i, _ in wanted.values()}), xb, threads)
    compared, last_match = 0, None
    for name in t32.order:
        if name not in wanted:
            continue
        i, effective = wanted[name]
        got = values.get(nodes[i].output[0])
        ref32, ref64 = t32.outputs.get(effective), t64.outputs.get(effective)
        if got is None or ref32 is None or ref64 is None or got.shape != ref32.shape:
            continue
        compared += 1
        tol, floor = _layer_tol(ref32, ref64, k, minimum)
        err = rel_max_error(got, ref32)
        if err > tol:
            mod = model.get_submodule(name)
            mtype = type(mod).__name__
            if effective != name:
                mtype += "+" + type(model.get_submodule(effective)).__name__
            div = Divergence(name, mtype, nodes[i].name or nodes[i].output[0], nodes[i].op_type, err, tol, floor,
                             compared, last_match, mode="scope")
            div.hint = explain(model, proto, nodes, mods, name, t32)
            return div
        last_match = name
    return Divergence(None, None, None, None, 0.0, 0.0, 0.0, compared, last_match, mode="scope",
                      hint=_unscoped_after(nodes, mods))


def _value_search(model, proto, nodes, t32, t64, xb, k, minimum, float_names, threads) -> Divergence:
    names = [n.output[0] for n in nodes if n.output and n.op_type not in _SHAPE_OPS and n.output[0] in float_names]
    values = run_with_intermediates(proto, names, xb, threads)
    producer = {n.output[0]: n for n in nodes if n.output}
    by_shape: dict[tuple, list[str]] = {}
    for nm in names:
        if nm in values:
            by_shape.setdefault(values[nm].shape, []).append(nm)
    compared, last_match = 0, None
    for name in t32.order:
        if not name:
            continue
        effective = t32.alias.get(name, name)  # a Conv is folded with the BN that follows it
        ref32, ref64 = t32.outputs[effective], t64.outputs[effective]
        cands = by_shape.get(ref32.shape, [])
        if not cands:
            continue
        compared += 1
        tol, floor = _layer_tol(ref32, ref64, k, minimum)
        errs = [(rel_max_error(values[c], ref32), c) for c in cands]
        best, best_name = min(errs)
        if best > tol:
            node = producer.get(best_name)
            return Divergence(name, type(model.get_submodule(name)).__name__,
                              (node.name or best_name) if node else best_name, node.op_type if node else None,
                              best, tol, floor, compared, last_match, mode="value",
                              hint="the file carries no module scope; the node named is the closest value of the same shape")
        last_match = name
    return Divergence(None, None, None, None, 0.0, 0.0, 0.0, compared, last_match, mode="value")


# --- naming the cause ---------------------------------------------------------------------

def _initializer(proto, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in proto.graph.node:  # constants folded into Constant nodes
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _folded_conv(conv: nn.modules.conv._ConvNd,
                 bn: nn.modules.batchnorm._BatchNorm | None) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        # an eval-mode BatchNorm has running statistics (the folding export did)
        var, mean = cast(torch.Tensor, bn.running_var), cast(torch.Tensor, bn.running_mean)
        scale = bn.weight.detach().double() / torch.sqrt(var.detach().double() + bn.eps)
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = (b - mean.detach().double()) * scale + bn.bias.detach().double()
    return w.numpy(), b.numpy()


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def explain(model: nn.Module, proto, nodes, mods, module: str, trace: TorchTrace) -> str | None:
    """Name the cause inside the diverging module when a cheap comparison can: a Resize mode,
    a Conv/Gemm weight or attribute, or foreign nodes between the graph input and the layer."""
    inside = [i for i, m in enumerate(mods) if m is not None and (m == module or m.startswith(module + "."))]
    hints: list[str] = []
    inv_alias = {v: k for k, v in trace.alias.items()}
    for i in inside:
        n = nodes[i]
        owner = mods[i]
        tmod = model.get_submodule(owner)
        if n.op_type in ("Resize", "Upsample"):
            ups = tmod if isinstance(tmod, nn.Upsample) else next(
                (m for m in tmod.modules() if isinstance(m, nn.Upsample)), None)
            if ups is not None:
                want = _UPSAMPLE_ONNX_MODE.get(ups.mode, ups.mode)
                got = _attr(n, "mode", "nearest")
                ctm = _attr(n, "coordinate_transformation_mode", "asymmetric (opset<11: no half_pixel)")
                want_ctm = ("align_corners" if ups.align_corners else "half_pixel") if want != "nearest" else None
                if got != want:
                    hints.append(f"{n.op_type} node '{n.name}' has mode='{got}', but torch module '{owner}' "
                                 f"is Upsample(mode='{ups.mode}')")
                elif want_ctm and ctm != want_ctm and not (want_ctm == "half_pixel" and ctm == "pytorch_half_pixel"):
                    hints.append(f"{n.op_type} node '{n.name}' has coordinate_transformation_mode='{ctm}', but torch "
                                 f"module '{owner}' (align_corners={ups.align_corners}) needs '{want_ctm}'")
        elif n.op_type == "BatchNormalization":
            bn_hint = _explain_batchnorm(proto, n, owner, tmod)
            if bn_hint:
                hints.append(bn_hint)
        elif n.op_type in ("Conv", "Gemm") and len(n.input) >= 2:
            conv = tmod if isinstance(tmod, (nn.modules.conv._ConvNd, nn.Linear)) else None
            bn: nn.modules.batchnorm._BatchNorm | None = None
            conv_name, bn_name = owner, None
            if conv is None and isinstance(tmod, nn.modules.batchnorm._BatchNorm) and owner in inv_alias:
                conv_name, bn_name = inv_alias[owner], owner  # dynamo: the folded node sits in the BN's scope
                conv, bn = cast("nn.modules.conv._ConvNd", model.get_submodule(conv_name)), tmod  # the BN's conv
            elif conv is not None and owner in trace.alias:
                bn_name = trace.alias[owner]  # legacy: the folded node sits in the Conv's scope
                bn = cast("nn.modules.batchnorm._BatchNorm", model.get_submodule(bn_name))  # the conv's BN
            if conv is None:
                continue
            w_onnx = _initializer(proto, n.input[1])
            if isinstance(conv, nn.modules.conv._ConvNd):
                conv_attrs: tuple[tuple[str, Any], ...] = (("strides", list(conv.stride)), ("dilations", list(conv.dilation)),
                                                           ("group", conv.groups))
                for attr, want_v in conv_attrs:
                    got = _attr(n, attr)
                    if got is not None and list(np.atleast_1d(got)) != list(np.atleast_1d(want_v)):
                        hints.append(f"Conv node '{n.name}' has {attr}={got}, but module '{conv_name}' has {want_v}")
            if w_onnx is None:
                continue
            w_ref, b_ref = _folded_conv(conv, bn) if isinstance(conv, nn.modules.conv._ConvNd) else (
                conv.weight.detach().double().numpy(), None)
            if n.op_type == "Gemm" and _attr(n, "transB", 0) == 0 and w_onnx.shape == w_ref.T.shape:
                w_onnx = w_onnx.T
            if w_onnx.shape != w_ref.shape:
                hints.append(f"{n.op_type} node '{n.name}' weight shape {w_onnx.shape} != module '{conv_name}' "
                             f"{tuple(w_ref.shape)}")
                continue
            per_ch = np.abs(w_onnx.astype(np.float64) - w_ref).reshape(len(w_ref), -1).max(axis=1)
            scale = np.abs(w_ref).reshape(len(w_ref), -1).max(axis=1)
            rel = per_ch / np.where(scale > 0, scale, 1.0)
            bad = np.nonzero(rel > 1e-5)[0]
            if len(bad):
                folded = f" with BatchNorm '{bn_name}' folded in" if bn is not None else ""
                chans = ", ".join(str(c) for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
                hints.append(f"{n.op_type} node '{n.name}' weight differs from module '{conv_name}'{folded} in "
                             f"{len(bad)} of {len(w_ref)} output channel(s) [{chans}], max rel diff {rel.max():.3g}")
    foreign = _foreign_upstream(nodes, mods, inside)
    if foreign:
        hints.append(foreign)
    return "; ".join(hints) if hints else None


def _explain_batchnorm(proto, n, owner: str, tmod: nn.Module) -> str | None:
    """An unfolded BatchNormalization node: training mode first (batch statistics), else its
    parameters and epsilon against the torch module's."""
    name = n.name or n.output[0]
    if training_mode_batchnorms([n]):
        return (f"BatchNormalization node '{name}' (module '{owner}') runs in training mode (training_mode=1): "
                "it normalises each batch with its own statistics, not the running mean/var; the file was "
                "exported from a model in train() mode (torch.onnx.export(training=TrainingMode.TRAINING), "
                "timm onnx_export(training=True)): re-export after model.eval()")
    bn = tmod if isinstance(tmod, nn.modules.batchnorm._BatchNorm) else None
    if bn is None or len(n.input) < 5:
        return None
    want = {"scale": bn.weight, "B": bn.bias, "mean": bn.running_mean, "var": bn.running_var}
    bad = []
    for (role, ref), inp in zip(want.items(), n.input[1:5]):
        got = _initializer(proto, inp)
        if ref is None or got is None:
            continue
        r = ref.detach().double().numpy()
        if got.shape != r.shape:
            bad.append(f"{role} shape {got.shape} != {r.shape}")
            continue
        rel = float(np.max(np.abs(got.astype(np.float64) - r)) / max(float(np.max(np.abs(r))), 1e-12))
        if rel > 1e-5:
            bad.append(f"{role} ('{inp}') max rel diff {rel:.3g}")
    eps = _attr(n, "epsilon", 1e-5)
    if abs(float(eps) - bn.eps) > 1e-3 * bn.eps:
        bad.append(f"epsilon {eps:g} != {bn.eps:g}")
    if not bad:
        return None
    return f"BatchNormalization node '{name}' differs from module '{owner}': " + ", ".join(bad)


def _foreign_upstream(nodes, mods, inside: list[int]) -> str | None:
    """Nodes outside every module scope that feed the diverging layer straight from the input."""
    if not inside:
        return None
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    found: list[int] = []
    stack = [inp for i in inside for inp in nodes[i].input]
    seen = set()
    while stack:
        v = stack.pop()
        if v in seen or v not in producer:
            continue
        seen.add(v)
        j = producer[v]
        if mods[j] is None and nodes[j].op_type not in ("Constant",):
            found.append(j)
            stack.extend(nodes[j].input)
    if not found:
        return None
    names = ", ".join(f"{nodes[j].op_type} '{nodes[j].name or nodes[j].output[0]}'" for j in sorted(found)[:4])
    return (f"the file computes {len(found)} node(s) outside any module scope before this layer ({names}): "
            "an edit or a preprocessing step baked into the graph")


def _unscoped_after(nodes, mods) -> str | None:
    last = max((i for i, m in enumerate(mods) if m is not None), default=None)
    if last is None or last == len(nodes) - 1:
        return None
    tail = [f"{n.op_type} '{n.name or n.output[0]}'" for n in nodes[last + 1:] if n.op_type not in _SHAPE_OPS]
    return f"nodes after the last mapped layer: {', '.join(tail[:4])}" if tail else None


# --- batch dependence ---------------------------------------------------------------------

def first_batch_dependent_node(onnx_path: Path | str, x: np.ndarray, tolerance: float,
                               model: nn.Module | None = None, threads: int | None = None) -> dict | None:
    """The first node (graph order) whose row for an image changes with the batch around it.

    Runs the file once on all of ``x`` and once per image, every intermediate exposed.
    """
    from .onnxfile import load_checked

    proto = load_checked(onnx_path)
    inits = {i.name for i in proto.graph.initializer}
    float_names = _float_outputs(proto)
    nodes = [n for n in proto.graph.node if n.output and n.op_type not in _SHAPE_OPS and n.output[0] in float_names]
    names = [n.output[0] for n in nodes]
    whole = run_with_intermediates(proto, names, x, threads)
    singles = [run_with_intermediates(proto, names, x[i:i + 1], threads) for i in range(len(x))]
    mods = node_modules(proto, ModuleIndex(model)) if model is not None else [None] * len(proto.graph.node)
    mod_of = {n.output[0]: m for n, m in zip(proto.graph.node, mods) if n.output}
    for n in nodes:
        v = whole.get(n.output[0])
        if v is None or v.ndim == 0 or v.shape[0] != len(x):
            continue
        rows = np.concatenate([s[n.output[0]] for s in singles])
        if rows.shape != v.shape:
            continue
        err = rel_max_error(v, rows)
        if err > tolerance:
            return {"node": n.name or n.output[0], "op_type": n.op_type, "module": mod_of.get(n.output[0]),
                    "inputs": [i for i in n.input if i not in inits], "rel_error": err,
                    "training_mode": bool(training_mode_batchnorms([n]))}
    return None
