"""Top-1/top-5 on real ImageNet against the card's published figures.

Definitions (the seeds): top-1 is the share of images whose best-scored class is the label;
top-5 the share whose label is among the five best-scored classes. The seeds rank softmax
scores; softmax keeps the order, so logits are ranked directly. Ties go to the lower class
index (stable sort), as in :func:`harness.compare.topk_accuracy`.

Which images. With ``--imagenet DIR`` the whole folder is evaluated, streamed batch by batch
(:meth:`Lab.iter_batches` over the calibration and the evaluation split together: the
published figures are on all 50,000 validation images, and which images calibrated int8
does not matter to fp32 accuracy). With ``--eval-images N`` only the N images of the
evaluation split are used. A missing or undecodable image is counted, named in the figures
(``skipped_images``) and dropped, never fatal.

Which published row is "claimed". A checkpoint file carries no provenance, so:

1. when the weights' source is given (``lab.settings.extra["weights_source"]``, or
   ``zooconform eval --source``), the rows of that source are the candidates;
2. otherwise every row of the card that has a top-1 figure is a candidate;

and the claimed row is the candidate whose top-1 is closest to the torch reference's
measured top-1 (the ONNX under test is held to the same row; without a torch reference, to
the row closest to its own figure). The message says which rule chose the row and lists
the others. Known gap of rule 2: weights that degraded from one recipe's figure to another
row's (e.g. HRNet-W18 ssld 81.6 -> 76.9) pass; give the source to close it.

Tolerance. ``[accuracy] top1_pt`` / ``top5_pt`` points on the full 50,000 images. On a
subset of n images the allowance is widened by the 95% Wilson half-width of the published
proportion at n, with the finite-population correction sqrt((50000 - n) / (50000 - 1))
(the subset is drawn from the 50,000 the card was measured on); the message says so.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from .compare import CheckFailure, binomial_halfwidth, message
from .errors import InputError, ZooconformError
from .tolerances import tolerance
from .zoo import ModelCard, PublishedRow

IMAGENET_VAL_IMAGES = 50_000
TOPK = 5

Runner = Callable[[torch.Tensor], np.ndarray]  # NCHW float32 batch -> (N, classes) logits


# --- evaluation -------------------------------------------------------------------------

@dataclass
class Evaluation:
    """Top-5 classes per image of every runner over the same images, plus what was skipped."""

    origin: str
    names: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    top5: dict[str, list[np.ndarray]] = field(default_factory=dict)  # runner -> batches of (b, 5)
    skipped: list[str] = field(default_factory=list)  # "<file>: <problem>" per dropped image
    errors: dict[str, ZooconformError] = field(default_factory=dict)  # runner that could not be built

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def runners(self) -> list[str]:
        return list(self.top5)

    def ranks(self, runner: str) -> np.ndarray:
        """(n, 5) class indices, best first."""
        if runner in self.errors:
            raise self.errors[runner]
        parts = self.top5.get(runner)
        if parts is None:
            raise KeyError(f"runner {runner!r} was not evaluated (have {self.runners})")
        return np.concatenate(parts) if parts else np.zeros((0, TOPK), np.int64)

    def hits(self, runner: str, k: int) -> np.ndarray:
        labels = np.asarray(self.labels, dtype=np.int64)
        return np.any(self.ranks(runner)[:, :k] == labels[:, None], axis=1)

    def accuracy(self, runner: str, k: int) -> float:
        """Share of images whose label is among the runner's k best classes (nan on no image)."""
        return float(np.mean(self.hits(runner, k))) if self.n else float("nan")

    def agreement(self, a: str, b: str) -> float:
        """Share of images on which runners a and b predict the same top-1 class."""
        return float(np.mean(self.ranks(a)[:, 0] == self.ranks(b)[:, 0])) if self.n else 1.0

    @classmethod
    def from_logits(cls, origin: str, names: list[str], labels: list[int], logits: dict[str, np.ndarray],
                    skipped: list[str] | None = None) -> Evaluation:
        ev = cls(origin, list(names), [int(v) for v in labels], skipped=list(skipped or []))
        for runner, out in logits.items():
            ev.top5[runner] = [ranked_top(np.asarray(out))]
        return ev


def ranked_top(logits: np.ndarray, k: int = TOPK) -> np.ndarray:
    """The k best classes per row, best first; ties to the lower class index."""
    return np.argsort(-np.asarray(logits, dtype=np.float64), axis=1, kind="stable")[:, :k]


def evaluate(batches: Iterable[tuple[torch.Tensor, list]], runners: dict[str, Runner], origin: str,
             expected: list | None = None, problems: Callable[[], list[str]] | None = None) -> Evaluation:
    """Stream ``batches`` of (NCHW tensor, samples) through every runner; keep only top-5.

    ``expected``: the samples the batches were made from, so that dropped images are counted;
    ``problems``: the loader's problem lines, to say *why* each was dropped.
    """
    ev = Evaluation(origin, top5={name: [] for name in runners})
    for x, samples in batches:
        for s in samples:
            if s.label is None:
                raise InputError(origin, f"image {s.name} has no label",
                                 fix="accuracy needs labels: val_label.txt with '<file name> <class index>'")
        ev.names.extend(s.name for s in samples)
        ev.labels.extend(int(s.label) for s in samples)
        for name, run in runners.items():
            logits = np.asarray(run(x))
            if logits.ndim != 2 or logits.shape[0] != len(samples) or logits.shape[1] < TOPK:
                raise InputError(origin, f"{name} returned logits of shape {logits.shape} for a batch of "
                                         f"{len(samples)}", fix="the model must output (batch, classes) logits")
            ev.top5[name].append(ranked_top(logits))
    if expected is not None:
        seen = set(ev.names)
        lines = problems() if problems else []
        for s in expected:
            if s.name not in seen:
                why = next((p for p in lines if s.name in p), f"{s.name}: not decoded")
                ev.skipped.append(why)
    return ev


def torch_runner(model: torch.nn.Module) -> Runner:
    model = model.eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(x).float().cpu().numpy()
    return run


def onnx_runner(sess) -> Runner:
    """A runtime session (``harness/runtimes``) as a runner; a file with a fixed batch size gets
    padded chunks of that size (``run_batched``)."""

    def run(x: torch.Tensor) -> np.ndarray:
        return sess.run_batched(x.detach().cpu().numpy())
    return run


def splits_for(lab) -> tuple[str, ...]:
    """The whole ImageNet folder (calib + eval) unless ``--eval-images`` asks for a subset."""
    if lab.settings.imagenet is None or lab.settings.eval_images:
        return ("eval",)
    return ("calib", "eval")


def image_batches(lab, card: ModelCard, batch_size: int = 32):
    """(batches, expected samples, problem lines, listed-but-missing lines) of the evaluated images.

    Batches are streamed; problem lines are read after the batches were consumed.
    """
    splits = splits_for(lab)
    expected: list = []
    listed_missing: list[str] = []
    for split in splits:
        images = lab.images(split)
        expected.extend(images.samples)
        listed_missing.extend(p for p in images.problems if p not in listed_missing)
    start = len(lab.data_problems)

    def batches():
        for split in splits:
            yield from lab.iter_batches(card, split, batch_size)

    return batches(), expected, (lambda: lab.data_problems[start:]), listed_missing


def evaluate_on(lab, card: ModelCard, runners: dict[str, Runner], errors: dict | None = None,
                batch_size: int = 32) -> Evaluation:
    """:func:`evaluate` over the lab's images (see the module doc for which ones)."""
    batches, expected, problems, listed_missing = image_batches(lab, card, batch_size)
    ev = evaluate(batches, runners, origin=str(lab.settings.imagenet or "embedded"), expected=expected,
                  problems=problems)
    # images listed in val_label.txt but absent from the folder never reach the loader
    ev.skipped = listed_missing + ev.skipped
    ev.errors.update(errors or {})
    return ev


# --- the suite's evaluation: torch reference and the ONNX under test, one pass ------------

def requirements(lab, card: ModelCard, runner: str) -> str | None:
    """Why ``runner`` ('torch' or 'onnx') cannot be judged against the card here (all that is
    missing, with what to provide), or None."""
    weights_fix = (f"--weights-dir DIR holding {card.id}.pth or {card.id}.safetensors, or "
                   f"checkpoint = \"...\" under [models.{card.id}] in --artifacts")
    missing = []
    if lab.settings.imagenet is None:
        missing.append("no real data: pass --imagenet DIR with DIR/val/*.JPEG (the ILSVRC2012 validation images) "
                       "and DIR/val_label.txt ('<file name> <0-based class index>' per line)")
    try:
        ckpt = lab.checkpoint_for(card)
        onnx = lab.artifacts(card).get("onnx")
    except ZooconformError:
        return None if not missing else missing[0]  # the check itself reports the broken manifest entry
    if runner == "torch" and ckpt is None:
        missing.append(f"no real weights for {card.id} (the seeded default cannot reach published accuracy): "
                       f"pass {weights_fix}")
    if runner == "onnx" and ckpt is None and onnx is None:
        missing.append(f"no ONNX with real weights for {card.id}: give onnx = \"...\" under [models.{card.id}] "
                       f"in --artifacts, or real weights to export from ({weights_fix})")
    return "; ".join(missing) or None


def evaluation(lab, card: ModelCard, runtime=None) -> Evaluation:
    """The torch reference (with real weights) and the ONNX under test run by ``runtime``
    (default ort), evaluated once per card and runtime.

    ONNX under test: the manifest's ``onnx``, else the suite's export of the reference.
    A runner that cannot be built (missing file, invalid ONNX) is an error of its own checks.
    """
    from . import runtimes
    from .export.exporter import exported

    rspec = runtimes.spec(runtime)
    key = card.id if rspec.id == runtimes.DEFAULT else (card.id, rspec.id)
    return lab.memo("accuracy.evaluation", key, lambda: _evaluate(lab, card, rspec, exported))


def _evaluate(lab, card: ModelCard, rspec, exported) -> Evaluation:
    runners: dict[str, Runner] = {}
    errors: dict[str, ZooconformError] = {}
    ckpt = None
    try:
        ckpt = lab.checkpoint_for(card)
        if ckpt is not None:
            runners["torch"] = torch_runner(lab.reference(card))
    except ZooconformError as e:
        errors["torch"] = e
    try:
        onnx = lab.artifacts(card).get("onnx")
        if onnx is None and ckpt is not None:
            onnx = exported(lab, card).path
        if onnx is not None:
            runners["onnx"] = onnx_runner(rspec.prepare(onnx, lab.settings.threads,
                                                        model=lab.reference(card) if rspec.runtime.runs_module
                                                        else None))
    except ZooconformError as e:
        errors["onnx"] = e
    if runners:
        return evaluate_on(lab, card, runners, errors)
    # nothing can run: no reason to decode the images
    return Evaluation(str(lab.settings.imagenet), errors=errors)


# --- checks -----------------------------------------------------------------------------

def subset_widening_pt(published_pct: float, n: int, population: int = IMAGENET_VAL_IMAGES) -> float:
    """95% Wilson half-width (points) of the published proportion on n of ``population`` images,
    finite-population corrected: 0 when the whole validation set was evaluated."""
    if n >= population:
        return 0.0
    fpc = math.sqrt((population - n) / (population - 1))
    return 100.0 * binomial_halfwidth(published_pct / 100.0, n) * fpc


def candidate_rows(card: ModelCard, source: str | None = None) -> list[PublishedRow]:
    rows = [r for r in card.published if r.top1 is not None]
    if source is not None:
        rows = [r for r in rows if source in r.sources]
    return rows


def claimed_row(card: ModelCard, measured_top1_pct: float, source: str | None = None) -> tuple[PublishedRow, str]:
    """The published row the measurement is held to, and how it was chosen (see module doc)."""
    rows = candidate_rows(card, source)
    if not rows:
        have = sorted({s for r in candidate_rows(card) for s in r.sources})
        raise InputError(card.file, f"[models.{card.id}] has no published top-1 for source {source!r}"
                         if source else f"[models.{card.id}] has no published top-1",
                         fix=f"sources with top-1 for {card.id}: {have}" if have else "nothing to compare with")
    row = min(rows, key=lambda r: (abs(cast(float, r.top1) - measured_top1_pct), r.weights is not None))  # rows with top1
    others = [r for r in rows if r is not row]
    if source:
        how = f"weights source '{source}'"
    else:
        how = "no weights source given: closest of the card's rows"
    if others:
        how += " (others: " + ", ".join(f"{'+'.join(r.sources)} '{r.name}' {r.top1}" for r in others) + ")"
    return row, how


def _row_where(card: ModelCard, row: PublishedRow) -> str:
    return f"{card.file.name} models.{card.id} '{row.name}' ({'+'.join(row.sources)}, seed {row.seed})"


RUNNER_NAMES = {"torch": "torch reference", "onnx": "ONNX under test", "runtime": "external runtime",
                "reference": "prepared reference"}


def check_against_card(card: ModelCard, ev: Evaluation, runner: str, record, source: str | None = None,
                       row: PublishedRow | None = None, how: str | None = None) -> PublishedRow:
    """``runner``'s top-1 (and top-5 where published) within tolerance of the claimed row.

    Returns the row used, so that a second runner can be held to the same one.
    """
    what = RUNNER_NAMES.get(runner, runner)
    ev.ranks(runner)  # a runner that could not be built raises its own error here
    if ev.n == 0:
        raise InputError(ev.origin, f"no image could be evaluated ({len(ev.skipped)} skipped: {ev.skipped[:3]})",
                         fix="check the --imagenet folder")
    top1 = 100.0 * ev.accuracy(runner, 1)
    top5 = 100.0 * ev.accuracy(runner, 5)
    if row is None:
        row, how = claimed_row(card, top1, source)
    figures = {"runner": what, "images": ev.n, "skipped_images": len(ev.skipped),
               "skipped_first": ev.skipped[:5], "top1_pct": round(top1, 3), "top5_pct": round(top5, 3),
               "claimed_row": row.name, "claimed_sources": list(row.sources), "claimed_seed": row.seed,
               "claimed_how": how, "published_top1_pct": row.top1, "published_top5_pct": row.top5,
               "data": ev.origin}
    failures = []
    for metric, measured, published, tol_name in (("top-1", top1, row.top1, "top1_pt"),
                                                 ("top-5", top5, row.top5, "top5_pt")):
        if published is None:
            continue
        tol = tolerance("accuracy", tol_name)
        widen = subset_widening_pt(published, ev.n)
        allowed = tol + widen
        key = metric.replace("-", "")
        figures.update({f"{key}_delta_pt": round(measured - published, 3), f"{key}_allowed_pt": round(allowed, 3),
                        f"{key}_widening_pt": round(widen, 3)})
        if abs(measured - published) > allowed:
            failures.append((metric, measured, published, tol, widen, allowed))
    record(**figures)
    if failures:
        metric, measured, published, tol, widen, allowed = failures[0]
        subset = (f"; widened by +-{widen:.2f} pt: 95% binomial interval on a subset of {ev.n} of "
                  f"{IMAGENET_VAL_IMAGES} images" if widen else "")
        skipped = f"; {len(ev.skipped)} image(s) skipped (first: {ev.skipped[0]})" if ev.skipped else ""
        where = f"{_row_where(card, row)}; claimed by {how}"
        raise CheckFailure(message(
            f"{metric} of {card.id} ({what}, {ev.n} images of {ev.origin})", f"{measured:.3f}%",
            f"{published}% +-{allowed:.2f} pt (tolerance {tol} pt{subset})", where,
            cause=_accuracy_cause(card, ev, runner, metric, measured, published, allowed) + skipped
                  + (f"; {', '.join(f[0] for f in failures[1:])} fails too" if len(failures) > 1 else "")), figures)
    return row


def _accuracy_cause(card: ModelCard, ev: Evaluation, runner: str, metric: str, measured: float,
                    published: float, allowed: float) -> str:
    k = 1 if metric == "top-1" else 5
    # another runner on the same images that does reach the card isolates the fault to this one
    for other in ev.runners:
        if other != runner and other not in ev.errors:
            theirs = 100.0 * ev.accuracy(other, k)
            if abs(theirs - published) <= allowed:
                return (f"the {RUNNER_NAMES.get(other, other)} reaches {theirs:.3f}% on the same images: the "
                        f"{RUNNER_NAMES.get(runner, runner)} computes something else (its weights, input channel "
                        "order or baked-in preprocessing)")
    chance = 100.0 * k / 1000
    if measured < 10 * chance:
        return (f"at chance level ({chance:g}%): labels in another class order than the model's outputs "
                "(val_label.txt must use 0-based ImageNet-1k indices), or not trained weights")
    if measured < published:
        return (f"{published - measured:.2f} pt below the card: preprocessing other than the card's "
                "(resize/crop/interpolation/mean-std, RGB order), other weights, or a broken artifact")
    return f"{measured - published:.2f} pt above the card: other (better) weights than the row claims, or another image set"


def check_runtime_matches_reference(card: ModelCard, ev: Evaluation, runner: str, reference: str, record) -> None:
    """On the same images, the runtime predicts the reference's top-1 class (fp32: near-ties only)."""
    ev.ranks(reference)
    ev.ranks(runner)
    agree = ev.agreement(runner, reference)
    need = tolerance("accuracy", "min_top1_agreement_fp32")
    top1_r, top1_ref = 100 * ev.accuracy(runner, 1), 100 * ev.accuracy(reference, 1)
    flipped = [ev.names[i] for i in np.flatnonzero(ev.ranks(runner)[:, 0] != ev.ranks(reference)[:, 0])]
    record(top1_agreement=round(agree, 6), images=ev.n, flipped_images=len(flipped), flipped_first=flipped[:5],
           top1_pct=round(top1_r, 3), reference_top1_pct=round(top1_ref, 3),
           top1_delta_pt=round(top1_r - top1_ref, 3))
    if agree < need:
        raise CheckFailure(message(
            f"top-1 agreement of {card.id} {RUNNER_NAMES.get(runner, runner)} with the "
            f"{RUNNER_NAMES.get(reference, reference)} ({ev.n} images)", f"{agree:.4f}", f">= {need}",
            f"first differing images: {flipped[:3]}",
            cause=f"{len(flipped)} images change their top-1 class (top-1 {top1_r:.2f}% vs {top1_ref:.2f}%): "
                  "fp32 differs only on near-ties; more means the artifact computes something else"))
