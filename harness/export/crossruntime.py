"""Checks across runtimes: the same file agrees on two runtimes, and one runtime is deterministic.

Plain functions of (lab, card, runtime specs, record) that know nothing of pytest.

* **Cross-runtime conformance** (:func:`check_runtimes_agree`): runtime A and runtime B run the
  fp32 file under test (the manifest's ``onnx``, else the suite's legacy opset-17 export; a
  runtime that runs the module runs the reference) on the embedded eval images; their logits
  agree within the export tolerance, ``k x`` the noise floor of the arithmetic they report
  (fp64 floor for fp32; a bf16/fp16 floor measured now when either computes in those). On
  failure the runtime that departs from the torch reference is named, the first diverging
  layer where a runtime exposes intermediates (ORT vs the torch module), else what was
  compared, and the output channels that differ most.
* **Determinism gate** (:func:`check_deterministic`): the same file in two fresh sessions, the
  same session run twice, and 1 thread vs N threads give bit-identical outputs or outputs
  within the floor (``max(floor, rel_min)``: a run-to-run spread may not exceed the rounding
  noise of the arithmetic itself). Its own finding, before any accuracy verdict: a spread
  above the floor makes every tolerance of that runtime meaningless.
"""
from __future__ import annotations

import numpy as np

from ..compare import CheckFailure, cosine_rows, message, rel_max_error, top1_agreement
from ..host import threads_for
from ..phases import in_phase
from ..tolerances import tolerance

SECTION = "export"  # the same question as the export numerics: the same tolerances
TOP_CHANNELS = 3


def _inputs(lab, card):
    from .checks import EXPORT_IMAGES

    x, _ = lab.inputs(card, "eval", limit=EXPORT_IMAGES)
    return x


def _subject(lab, card, path, label):
    """The file under test (the suite's export unless ``path``), its label, the card's
    reference module and the inputs: what every cross-runtime check starts from."""
    if path is None:
        path, label = file_under_test(lab, card)
    return path, label or str(path), lab.reference(card), _inputs(lab, card)


def file_under_test(lab, card):
    from .checks import fp32_file_under_test

    return fp32_file_under_test(lab, card)


def _floor(model, x, precisions, lab) -> tuple[float, float, str]:
    """The floor of the least precise of ``precisions``, with its cosine floor and its kind."""
    from .checks import floor_for, reference_and_floor

    ref32, ref64 = reference_and_floor(model, x, lab)
    best = floor_for(model, x, ref32, ref64, "fp32")
    for p in set(precisions):
        if p not in ("fp32", "f32") and not str(p).startswith("int8"):
            cand = floor_for(model, x, ref32, ref64, p)
            if cand[0] > best[0]:
                best = cand
    return best


def _threads(lab) -> int | None:
    return lab.settings.threads


def check_runtimes_agree(card, lab, record, a, b, *, path=None, label: str | None = None) -> None:
    """Runtime ``a`` vs runtime ``b`` (``harness.runtimes.Spec``) on the same fp32 file."""
    from .checks import numerics_tolerance, reference_and_floor

    path, label, model, x = _subject(lab, card, path, label)
    xn = x.numpy()
    sessions, outs = {}, {}
    for spec in (a, b):
        try:
            with in_phase(lab, "evaluation"):
                sessions[spec.id] = sess = spec.prepare(path, _threads(lab), model=model)
                outs[spec.id] = sess.run_batched(xn, 8)
        except Exception as e:
            raise CheckFailure(message(f"{spec.id} on {label}", f"{type(e).__name__}: {str(e)[:200]}",
                                       f"logits for {tuple(xn.shape)}", str(path),
                                       cause=f"{spec.id} cannot run the file the other runtimes run")) from None
    sa, sb = sessions[a.id], sessions[b.id]
    oa, ob = outs[a.id], outs[b.id]
    floor, cos_floor, kind = _floor(model, x, (sa.effective_precision, sb.effective_precision), lab)
    tol = numerics_tolerance(floor)
    err = rel_max_error(ob, oa)
    cos = float(np.min(cosine_rows(ob, oa)))
    cos_min = tolerance(SECTION, "min_cosine")
    if cos_floor:
        cos_min = min(cos_min, 1.0 - tolerance(SECTION, "rel_floor_multiple") * cos_floor)
    ref32, _ = reference_and_floor(model, x, lab)
    from_ref = {s: rel_max_error(o, ref32) for s, o in outs.items()}
    figures = dict(runtime_a=a.id, runtime_b=b.id, runtime_a_settings=sa.settings, runtime_b_settings=sb.settings,
                   runtime_a_precision=sa.effective_precision, runtime_b_precision=sb.effective_precision,
                   n_images=len(xn), rel_max_error=err, noise_floor=floor, noise_floor_kind=kind, tolerance=tol,
                   error_over_floor=err / floor if floor > 0 else None, min_cosine=cos, cosine_min_allowed=cos_min,
                   top1_agreement=top1_agreement(ob, oa), runtime_a_vs_torch_rel=from_ref[a.id],
                   runtime_b_vs_torch_rel=from_ref[b.id])
    record(**figures)
    if err <= tol and cos >= cos_min:
        return
    # which runtime departs: the one further from the torch reference
    off = max((a, b), key=lambda s: from_ref[s.id])
    other = b if off is a else a
    diff = np.abs(ob.astype(np.float64) - oa)
    worst = int(np.argmax(diff.max(axis=1)))
    channels = [int(c) for c in np.argsort(-diff.max(axis=0))[:TOP_CHANNELS]]
    figures.update(runtime_departing=off.id, worst_image=worst, worst_channels=channels)
    record(runtime_departing=off.id, worst_image=worst, worst_channels=channels)
    where = _locate(off, other, model, path, x[worst:worst + 1], figures, record, lab, n=len(xn))
    raise CheckFailure(message(
        f"max|{b.id} - {a.id}| / max|{a.id}| on {label} over {len(xn)} embedded images "
        f"({a.id}: {sa.settings}; {b.id}: {sb.settings})", f"{err:.3g}",
        f"<= {tol:.3g} ({tolerance(SECTION, 'rel_floor_multiple'):g} x {kind} {floor:.3g}; min cosine {cos:.9f} "
        f"vs >= {cos_min})", where,
        cause=(f"runtime {off.id} ({off.id} vs torch {from_ref[off.id]:.3g}, {other.id} vs torch "
               f"{from_ref[other.id]:.3g}) computes a different function; output channel(s) {channels} differ most "
               f"(image {worst})")), figures)


def _locate(off, other, model, path, x1, figures, record, lab, *, n: int) -> str:
    """The first diverging layer where a runtime exposes intermediates, else what was compared."""
    from .. import divergence
    from .checks import SECTION as EXPORT

    ort_side = next((s for s in (off, other) if s.name.startswith("ort") and s.runtime.exposes_intermediates), None)
    torch_side = next((s for s in (off, other) if s.runtime.runs_module), None)
    if ort_side is not None and (torch_side is not None or off is ort_side):
        try:
            div = divergence.first_divergence(model, path, x1, k=tolerance(EXPORT, "rel_floor_multiple"),
                                              minimum=tolerance(EXPORT, "layer_rel_min"), threads=lab.settings.threads)
        except Exception as e:  # the locator must never hide the finding itself
            return f"{path} (layer search of {ort_side.id} vs torch failed: {type(e).__name__}: {str(e)[:150]})"
        figures.update(div.figures())
        record(**div.figures())
        return f"{ort_side.id} vs the torch module, layer by layer: {div.where()}; file {path}"
    return (f"{path}: {off.id} exposes no intermediates, so the final logits of {n} embedded images were compared "
            f"({other.id} vs {off.id}); no layer can be named")


# --- determinism ---------------------------------------------------------------------------

def check_deterministic(card, lab, record, spec, *, path=None, label: str | None = None,
                        threads: int | None = None) -> dict:
    """Two fresh sessions, one session run twice, and 1 vs N threads: bit-identical or within
    ``max(floor, rel_min)``. Returns the spreads (also recorded)."""
    from .checks import reference_and_floor

    path, label, model, x = _subject(lab, card, path, label)
    xn = x.numpy()
    n = threads or threads_for(lab)
    with in_phase(lab, "evaluation"):
        first = spec.prepare(path, n, model=model)
        o1 = first.run_batched(xn, 8)
        o1_again = first.run_batched(xn, 8)
        o2 = spec.prepare(path, n, model=model).run_batched(xn, 8)
        o3 = spec.prepare(path, 1, model=model).run_batched(xn, 8) if n != 1 else o1
    spreads = {"same_session": rel_max_error(o1_again, o1), "fresh_session": rel_max_error(o2, o1),
               f"threads_1_vs_{n}": rel_max_error(o3, o1)}
    identical = {k: bool(np.array_equal(a, o1)) for k, a in
                 (("same_session", o1_again), ("fresh_session", o2), (f"threads_1_vs_{n}", o3))}
    ref32, ref64 = reference_and_floor(model, x, lab)
    floor, _, kind = _floor(model, x, (first.effective_precision,), lab)
    bound = max(floor, tolerance(SECTION, "rel_min"))
    figures = {"runtime": spec.id, "effective_precision": first.effective_precision,
               "runtime_settings": first.settings, "determinism_threads": n, "n_images": len(xn),
               "noise_floor": floor, "noise_floor_kind": kind, "determinism_bound": bound,
               **{f"spread_{k}": v for k, v in spreads.items()},
               **{f"bit_identical_{k}": v for k, v in identical.items()},
               "spread_max": max(spreads.values())}
    record(**figures)
    bad = {k: v for k, v in spreads.items() if v > bound}
    if not bad:
        return figures
    k, v = max(bad.items(), key=lambda kv: kv[1])
    what = {"same_session": "the same session run twice", "fresh_session": "two fresh sessions"}.get(
        k, f"1 thread vs {n} threads")
    raise CheckFailure(message(
        f"run-to-run spread max|run2 - run1| / max|run1| of {spec.id} ({first.settings}) on {label}, {what}, "
        f"{len(xn)} embedded images", f"{v:.3g}", f"0 (bit-identical) or <= {bound:.3g} ({kind})", str(path),
        cause=(f"runtime {spec.id} is not deterministic beyond its own rounding noise"
               + (f" ({len(bad)} of 3 comparisons: {', '.join(bad)})" if len(bad) > 1 else "")
               + ": every tolerance judged on it measures its noise, not the model")), figures)
