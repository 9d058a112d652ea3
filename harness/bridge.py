"""The bridge to runtimes the suite cannot import: files in, files out (the seeds' workflow).

The seeds test a vendor runtime with three tools: ``image2npz.py`` (images -> ``.npz`` +
datalist), ``vamp --datalist`` (the runtime runs every listed file and writes its outputs)
and ``vamp_eval.py`` (outputs + labels -> top-1/top-5). ``zooconform prepare`` and
``zooconform eval`` are the first and the last step, with the card's preprocessing and a
torch reference to compare against.

Prepared folder (``zooconform prepare --model ID --out DIR``)::

    DIR/prepare.json       what was prepared: model, preprocessing, images, weights, noise floor
    DIR/datalist.txt       one input file per line (absolute path); its order is the order of all below
    DIR/inputs/<stem>.npz  key "input_0" (the seeds' key): float32 (1, 3, S, S), NCHW, RGB, the
                           card's preprocessing (resize/crop, ToTensor, Normalize) already applied
    DIR/reference.npz      "logits" float32 (N, 1000): the torch reference on those inputs;
                           "names" (N,) stems; "labels" int64 (N,), -1 where unknown;
                           "floor" float64 (N,): each image's fp32 noise floor, max|fp32 - fp64|
                           over its logits (logit units), NaN where not measured;
                           "floor_fp16_weights" float64 (N,): the same with every weight rounded
                           to fp16 (fp32 arithmetic), what fp16-stored weights cost;
                           "cos_floor_fp16_weights" float64 (N,): 1 - cosine of that run with fp64
    DIR/val_label.txt      "<image file name> <class index>": only when the images have labels

``<stem>`` is the image's file stem (``ILSVRC2012_val_00000001``), or the embedded image's
name with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (``chelsea_0``).

Runtime outputs (``zooconform eval --results DIR``): one file per datalist line, either

- ``<stem>.npz`` with the logits under ``output_0`` (vamp's key) or ``logits``, or as its only array;
- ``<stem>.bin`` or ``<stem>.raw``: raw little-endian float32, exactly 1000 values (4000 bytes);

any shape that holds 1000 values ((1000,), (1, 1000), (1, 1000, 1, 1)). A runtime that
numbers its outputs instead of naming them (vamp writes them in datalist order) is matched
by the number in the file name, in order, when no file is named by stem and there are
exactly as many numbered files as datalist lines; the results say so.

Checks (fp32 runtimes), with the export suite's tolerances (``[export]``): every image's
output agrees with the reference, max|out_i - ref_i| / max|ref| within ``rel_floor_multiple``
times that image's own fp32 noise floor (the reference in float32 vs float64, measured by
``prepare``; never below ``rel_min``), and its cosine with the reference is at least
``min_cosine``. The floor is per image because it varies by 10^5 between images of one
model (seeded resnest50 on 200 embedded images: 7.8e-9 .. 1.05e-3, ``zooconform prepare``,
and ORT follows it within 3.2x): one global floor would let a tampered file hide behind the
worst-conditioned image. float64 is slow on CPU, so ``prepare --floor-images N`` measures
the first N images only (default: all embedded images, 200 of an ImageNet folder); the
others get the largest floor measured. With labels, top-1/top-5 are computed, and with
real weights on ImageNet held to the card like the accuracy suite does
(:mod:`harness.accuracy`). Not for int8 runtimes: their error is no fp32 noise.

fp16 weights. OpenVINO's ``openvino.save_model`` (and ``ovc``) compress the weights to fp16 by
default (``compress_to_fp16=True``); run in f32 such an IR departs from the reference on every
image by what rounding the weights costs, and an fp32 judgement of it fails. Measured (openvino
2026.4.1, f32 hint, the suite's opset-17 export, 8 embedded images): worst error 1.8e-3 / 3.4e-4 /
6.0e-4 relative, 2290x / 2210x / 4580x the fp32 floor, 0.78x / 0.95x / 0.88x the fp16-weights
floor (repvgg_a0 / hrnet_w18_small_v1 / resnest50), top-1 agreement 1.0, min cosine >= 0.9999964;
the same IR saved with compress_to_fp16=False: 2.6x / 2.0x / 2.9x the fp32 floor, passing. That
signature (every image off, top-1 and cosine intact, errors within ``fp16_floor_multiple`` x the
fp16-weights floor ``prepare`` measures) is named in the message, with ``compress_to_fp16=False``
as the fix. A runtime that declares fp16 (``check_agreement(...,
precision="fp16")``, ``zooconform eval --precision fp16``) is judged against that fp16-weights
floor instead: fp16-stored weights, fp32 arithmetic (a runtime that also computes in fp16 departs
further and fails it).
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from . import accuracy as acc
from .compare import CheckFailure, cosine_rows, message, rel_max_error
from .constants import NUM_CLASSES
from .errors import InputError
from .report.results import ResultsCollector, atomic_write_text, jsonable, library_versions
from .tolerances import tolerance
from .zoo import ModelCard

SCHEMA = "zooconform.prepared/1"
META = "prepare.json"
DATALIST = "datalist.txt"
REFERENCE = "reference.npz"
LABELS = "val_label.txt"
INPUTS = "inputs"
INPUT_KEY = "input_0"
OUTPUT_KEYS = ("output_0", "logits")
OUTPUT_SUFFIXES = (".npz", ".bin", ".raw")
IMAGENET_FLOOR_IMAGES = 200  # float64 convolutions are slow on CPU (1.5 s per repvgg_a0 image on 2 busy cores)
SECTION = "export"  # the export suite's numerics tolerances: the same question, ORT vs torch
PRECISIONS = ("fp32", "fp16")  # what a runtime behind the bridge may declare (fp16: fp16-stored weights)
# the signature of reduced-precision weights: nearly every image off, yet top-1 and cosine intact
SIGNATURE_OFF_SHARE = 0.9
SIGNATURE_TOP1 = 0.99
_OWN = (META, DATALIST, REFERENCE, LABELS)


def safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem if "." in name else name) or "image"


def unique_stem(name: str, taken: set[str]) -> str:
    """The file stem of an image, made unique among ``taken`` (which it joins)."""
    base = stem = safe_stem(name)
    i = 1
    while stem in taken:
        stem, i = f"{base}_{i}", i + 1
    taken.add(stem)
    return stem


# --- prepare ----------------------------------------------------------------------------

def _claim_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder", fix="choose a new folder for --out")
    if out.is_dir() and any(out.iterdir()) and not (out / META).is_file():
        raise InputError(out, "folder is not empty and was not written by zooconform prepare",
                         fix="choose an empty or new folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / INPUTS, ignore_errors=True)  # a previous prepare's inputs: replaced whole
    for name in _OWN:
        (out / name).unlink(missing_ok=True)
    (out / INPUTS).mkdir()


def image_floors(logits32: np.ndarray, logits64: np.ndarray) -> np.ndarray:
    """Per image: max|fp32 - fp64| over its logits, the error fp32 arithmetic itself costs there."""
    return np.max(np.abs(logits32.astype(np.float64) - logits64), axis=1)


def fp16_weights_model(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of ``model`` whose float parameters and buffers are rounded to fp16 and back:
    what a runtime that stores its weights in fp16 and computes in fp32 runs (OpenVINO's
    compressed IR on an f32 plug-in)."""
    rounded = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for t in [*rounded.parameters(), *rounded.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
    return rounded


def prepare(lab, card: ModelCard, out: Path | str, batch_size: int = 16, floor_images: int | None = None) -> dict:
    """Write the prepared folder for ``card`` over the lab's images (see the module doc).

    ``floor_images``: how many images get a float64 noise floor (default: all embedded, 200 of ImageNet).
    """
    out = Path(out).resolve()
    ckpt = lab.checkpoint_for(card)
    model = lab.reference(card)
    from .models import state_digest

    if floor_images is None:
        floor_images = IMAGENET_FLOOR_IMAGES if lab.settings.imagenet else 1 << 62
    _claim_folder(out)
    batches, expected, problems, listed_missing = acc.image_batches(lab, card, batch_size)
    names: list[str] = []
    image_names: list[str] = []
    labels: list[int] = []
    logits: list[np.ndarray] = []
    logits64: list[np.ndarray] = []
    taken: set[str] = set()
    model64 = copy.deepcopy(model).double().eval() if floor_images > 0 else None
    model16w = fp16_weights_model(model) if floor_images > 0 else None
    logits16w: list[np.ndarray] = []
    with torch.no_grad():
        for x, samples in batches:
            stems = [unique_stem(s.name, taken) for s in samples]
            for i, stem in enumerate(stems):
                np.savez(out / INPUTS / f"{stem}.npz", **{INPUT_KEY: x[i:i + 1].numpy().astype(np.float32)})
            logits.append(model(x).float().numpy())
            measured = sum(len(t) for t in logits64)
            if measured < floor_images:
                assert model64 is not None and model16w is not None  # floor_images > 0
                logits64.append(model64(x[:floor_images - measured].double()).numpy())
                logits16w.append(model16w(x[:floor_images - measured]).numpy())
            names.extend(stems)
            image_names.extend(s.name for s in samples)
            labels.extend(-1 if s.label is None else int(s.label) for s in samples)
    if not names:
        raise InputError(lab.settings.imagenet or "embedded", "no image could be read",
                         fix="check the --imagenet folder")
    all_logits = np.concatenate(logits).astype(np.float32)
    floors = np.full(len(names), np.nan)
    floors16w = np.full(len(names), np.nan)
    cos16w = np.full(len(names), np.nan)
    if logits64:
        l64 = np.concatenate(logits64)
        floors[:len(l64)] = image_floors(all_logits[:len(l64)], l64)
        l16w = np.concatenate(logits16w)
        floors16w[:len(l64)] = image_floors(l16w, l64)
        cos16w[:len(l64)] = 1.0 - cosine_rows(l16w, l64)
    seen = set(image_names)
    skipped = listed_missing + [next((p for p in problems() if s.name in p), f"{s.name}: not decoded")
                                for s in expected if s.name not in seen]
    scale = float(np.max(np.abs(all_logits))) or 1.0
    np.savez(out / REFERENCE, logits=all_logits, names=np.array(names), labels=np.array(labels, dtype=np.int64),
             floor=floors, floor_fp16_weights=floors16w, cos_floor_fp16_weights=cos16w)
    atomic_write_text(out / DATALIST, "".join(f"{out / INPUTS / n}.npz\n" for n in names))
    labelled = all(v >= 0 for v in labels)
    if labelled:
        atomic_write_text(out / LABELS, "".join(f"{im} {v}\n" for im, v in zip(image_names, labels)))
    meta = {
        "schema": SCHEMA, "model": card.id, "card": card.file.name,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": len(names), "data": str(lab.settings.imagenet or "embedded"), "splits": list(acc.splits_for(lab)),
        "imagenet": lab.settings.imagenet is not None, "labelled": labelled, "skipped": skipped,
        "input": {"key": INPUT_KEY, "shape": [1, 3, card.input_size, card.input_size], "dtype": "float32",
                  "layout": "NCHW", "channels": "RGB", "preprocess": asdict(card.preprocess)},
        "outputs": {"naming": "<stem>.npz (key output_0 | logits | only array) or <stem>.bin/.raw "
                              "(raw little-endian float32)", "values": NUM_CLASSES},
        "weights": {"kind": "checkpoint", "path": str(ckpt)} if ckpt else
                   {"kind": "seeded default (recalibrated random init)"},
        "weights_digest": state_digest(model),
        "noise_floor": {"images_measured": int(np.count_nonzero(~np.isnan(floors))),
                        "max_rel": float(np.nanmax(floors) / scale) if logits64 else None,
                        "median_rel": float(np.nanmedian(floors) / scale) if logits64 else None,
                        "fp16_weights_max_rel": float(np.nanmax(floors16w) / scale) if logits64 else None},
        "versions": library_versions(),
    }
    atomic_write_text(out / META, json.dumps(jsonable(meta), indent=1))
    return meta


# --- eval -------------------------------------------------------------------------------

@dataclass
class Prepared:
    folder: Path
    meta: dict
    names: list[str]
    reference: np.ndarray
    labels: np.ndarray  # -1 where unknown
    floors: np.ndarray  # per image max|fp32 - fp64| (logit units); NaN where not measured
    # per image max|fp16-weights run - fp64| (logit units) and 1 - its cosine with fp64; None: a
    # folder prepared before these were measured
    floors_fp16w: np.ndarray | None = None
    cos_floors_fp16w: np.ndarray | None = None

    @property
    def scale(self) -> float:
        return float(np.max(np.abs(self.reference))) or 1.0

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool(np.all(self.labels >= 0))


def load_prepared(folder: Path | str, model_id: str | None = None) -> Prepared:
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise InputError(meta_path, "not found: not a folder written by zooconform prepare",
                         fix="pass --prepared DIR, the folder given to zooconform prepare --out")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise InputError(meta_path, f"unreadable ({e})", fix="re-run zooconform prepare") from None
    if meta.get("schema") != SCHEMA:
        raise InputError(meta_path, f"schema {meta.get('schema')!r}, expected {SCHEMA!r}", fix="re-run zooconform prepare")
    if model_id is not None and meta.get("model") != model_id:
        raise InputError(meta_path, f"prepared for model {meta.get('model')!r}, not {model_id!r}",
                         fix=f"pass --model {meta.get('model')} or the folder prepared for {model_id}")
    ref_path = folder / REFERENCE
    try:
        with np.load(ref_path, allow_pickle=False) as z:
            reference, names, labels, floors = z["logits"], [str(n) for n in z["names"]], z["labels"], z["floor"]
            f16w = np.asarray(z["floor_fp16_weights"], np.float64) if "floor_fp16_weights" in z else None
            c16w = np.asarray(z["cos_floor_fp16_weights"], np.float64) if "cos_floor_fp16_weights" in z else None
    except FileNotFoundError:
        raise InputError(ref_path, "not found", fix="re-run zooconform prepare") from None
    except (ValueError, KeyError, OSError) as e:
        raise InputError(ref_path, f"unreadable ({e})", fix="re-run zooconform prepare") from None
    listed = read_datalist(folder / DATALIST)
    stems = [Path(p).stem for p in listed]
    if stems != names:
        first = next((i for i, (a, b) in enumerate(zip(stems, names)) if a != b), min(len(stems), len(names)))
        got = stems[first] if first < len(stems) else "<end of file>"
        want = names[first] if first < len(names) else "<end of file>"
        raise InputError(folder / DATALIST,
                         f"does not match {REFERENCE}: {len(stems)} lines for {len(names)} prepared images; "
                         f"line {first + 1} names {got!r}, expected {want!r}",
                         fix="use the datalist.txt prepare wrote (re-run zooconform prepare to regenerate it)")
    return Prepared(folder, meta, names, np.asarray(reference, dtype=np.float32), np.asarray(labels, dtype=np.int64),
                    np.asarray(floors, dtype=np.float64), f16w, c16w)


def read_datalist(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(path, "datalist not found", fix="re-run zooconform prepare")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _values(path: Path) -> np.ndarray:
    """The logits of one output file, flattened, as float32; bad files raise InputError naming them."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next((k for k in OUTPUT_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(path, f"holds arrays {keys} and none is named {' or '.join(OUTPUT_KEYS)}",
                                     fix="store the logits under 'output_0' (or write one array only)")
                arr = z[key]
        except InputError:
            raise
        except Exception as e:  # zipfile / numpy raise several types for a damaged file
            raise InputError(path, f"not a readable .npz ({type(e).__name__}: {e})",
                             fix="rewrite the output with numpy.savez") from None
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(path, f"holds {arr.dtype} values, expected floating-point logits",
                             fix="write the runtime's float output (dequantize int8 outputs first)")
        values = arr.astype(np.float32).reshape(-1)
        shape = arr.shape
    else:
        raw = path.read_bytes()
        if len(raw) != 4 * NUM_CLASSES:
            hint = " (2000 bytes: float16? write float32)" if len(raw) == 2 * NUM_CLASSES else ""
            raise InputError(path, f"{len(raw)} bytes, expected {4 * NUM_CLASSES} ({NUM_CLASSES} float32 logits){hint}",
                             fix="write the raw output as little-endian float32, one image per file")
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        shape = values.shape
    if values.size != NUM_CLASSES:
        raise InputError(path, f"holds {values.size} values of shape {tuple(shape)}, expected {NUM_CLASSES} logits "
                               f"(1, {NUM_CLASSES})", fix="one image per file: the model's (1, 1000) output")
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise InputError(path, f"holds {bad} non-finite value(s) (NaN/Inf) among its {NUM_CLASSES} logits",
                         fix="the runtime produced NaN/Inf for this input: check its precision/overflow")
    return values


def _number(stem: str) -> int | None:
    m = re.search(r"(\d+)$", stem)
    return int(m.group(1)) if m else None


def match_outputs(results: Path, prepared: Prepared) -> tuple[list[Path], str]:
    """The output file of every prepared image, in datalist order, and how they were matched."""
    if not results.is_dir():
        raise InputError(results, "results folder not found", fix="pass --results DIR where the runtime wrote its outputs")
    files = sorted(p for p in results.iterdir() if p.is_file() and p.suffix in OUTPUT_SUFFIXES)
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    wanted = set(prepared.names)
    dupes = [v for s, v in by_stem.items() if s in wanted and len(v) > 1]
    if dupes:
        raise InputError(dupes[0][0], f"two outputs for one image: {[p.name for p in dupes[0]]}",
                         fix="keep one output file per image")
    matched = [by_stem.get(s, [None])[0] for s in prepared.names]
    strangers = [p for p in files if p.stem not in wanted]
    if all(m is None for m in matched) and strangers:
        numbered = [p for p in strangers if _number(p.stem) is not None]
        if len(numbered) == len(prepared.names) == len(strangers):
            return sorted(numbered, key=lambda p: cast(int, _number(p.stem))), "by the number in the file name (datalist order)"
    missing = [results / f"{s}.npz" for s, m in zip(prepared.names, matched) if m is None]
    if missing:
        other = (f"; the folder holds {len(strangers)} output file(s) named for no datalist line "
                 f"(first: {strangers[0].name}): a different datalist?") if strangers else ""
        raise InputError(missing[0], f"output missing: {len(missing)} of {len(prepared.names)} datalist lines have no "
                                     f"output in {results} (first: {', '.join(p.stem for p in missing[:3])}){other}",
                         fix=f"run the runtime over {prepared.folder / DATALIST} and write <stem>.npz|.bin|.raw per line")
    if strangers:
        raise InputError(strangers[0], f"output for an image that is not in {prepared.folder / DATALIST} "
                                       f"({len(strangers)} such file(s)): the runtime ran another datalist",
                         fix="run the runtime over this prepared folder's datalist.txt, into an empty results folder")
    return cast("list[Path]", matched), "by stem"  # none is None: missing ones raised above


def read_outputs(results: Path | str, prepared: Prepared) -> tuple[np.ndarray, list[Path], str]:
    files, how = match_outputs(Path(results), prepared)
    return np.stack([_values(p) for p in files]), files, how


def _filled(floors: np.ndarray) -> np.ndarray:
    """Per-image floors with the largest measured one where an image was not measured."""
    measured = ~np.isnan(floors)
    fallback = float(np.max(floors[measured])) if measured.any() else 0.0
    return np.where(measured, floors, fallback)


def allowed_errors(prepared: Prepared, precision: str = "fp32") -> np.ndarray:
    """Per image: rel_floor_multiple x its floor (the largest measured where not measured), >= rel_min;
    ``precision="fp16"``: also at least fp16_floor_multiple x its fp16-weights floor."""
    allowed = np.maximum(tolerance(SECTION, "rel_floor_multiple") * _filled(prepared.floors / prepared.scale),
                         tolerance(SECTION, "rel_min"))
    if precision == "fp16":
        f16w = _fp16w_floors(prepared)
        allowed = np.maximum(allowed, tolerance(SECTION, "fp16_floor_multiple") * f16w)
    return allowed


def _fp16w_floors(prepared: Prepared) -> np.ndarray:
    """Per image: the fp16-weights floor relative to the output scale; a folder without it is refused."""
    if prepared.floors_fp16w is None or not np.any(~np.isnan(prepared.floors_fp16w)):
        raise InputError(prepared.folder / REFERENCE, "holds no fp16-weights floor (floor_fp16_weights): prepared by an "
                                                      "older zooconform or with --floor-images 0",
                         fix="re-run zooconform prepare (with --floor-images >= 1) to judge an fp16 runtime")
    return _filled(prepared.floors_fp16w / prepared.scale)


def reduced_precision_cause(prepared: Prepared, per_image: np.ndarray, off: np.ndarray, agree: float,
                            min_cos: float, need_cos: float) -> str | None:
    """Name fp16-stored weights when the failure looks like them: nearly every image departs,
    but top-1 and cosine stay intact (a wrong graph or a mixed-up file moves both), and, where
    ``prepare`` measured it, every error is within fp16_floor_multiple x what rounding the
    weights to fp16 costs."""
    n = len(per_image)
    if not n or len(off) < SIGNATURE_OFF_SHARE * n or agree < SIGNATURE_TOP1 or min_cos < need_cos:
        return None
    fix = ("OpenVINO: openvino.save_model and ovc compress weights to fp16 by default: save with "
           "compress_to_fp16=False (ovc --compress_to_fp16=False) for fp32 weights, or declare fp16 "
           "(zooconform eval --precision fp16) to judge against the fp16-weights floor")
    head = (f"{len(off)} of {n} output files depart from the reference by a small amount with top-1 agreement "
            f"{agree:.3f} and min cosine {min_cos:.7f} intact")
    measured = prepared.floors_fp16w is not None and np.any(~np.isnan(prepared.floors_fp16w))
    if not measured:
        return (f"{head}: the signature of reduced-precision weights or arithmetic, likely fp16-compressed "
                f"weights (this prepared folder has no fp16-weights floor to confirm it); {fix}")
    ratio = per_image / _fp16w_floors(prepared)
    limit = tolerance(SECTION, "fp16_floor_multiple")
    if float(np.max(ratio)) <= limit:
        return (f"{head}, each within {float(np.min(ratio)):.2f}-{float(np.max(ratio)):.2f}x what rounding the "
                f"weights to fp16 costs (prepare's fp16-weights floor; <= {limit:g}x): the runtime ran fp16-stored "
                f"weights (fp16 weight compression); {fix}")
    return (f"{head}, but up to {float(np.max(ratio)):.3g}x what fp16 weights cost (more than {limit:g}x): "
            "reduced-precision arithmetic (bf16, fp16 activations, an approximate kernel) rather than fp16 "
            "weights alone; check the runtime's inference precision (OpenVINO: INFERENCE_PRECISION_HINT=f32)")


def check_agreement(card: ModelCard, prepared: Prepared, outputs: np.ndarray, files: list[Path], record,
                    precision: str = "fp32") -> None:
    """Runtime outputs equal the reference, each image within k x its own noise floor (fp32);
    ``precision="fp16"`` (declared by the user: fp16-stored weights) within fp16_floor_multiple x
    its fp16-weights floor as well."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: the bridge judges {' or '.join(PRECISIONS)}")
    ref = prepared.reference
    k = tolerance(SECTION, "rel_floor_multiple")
    allowed32 = allowed_errors(prepared)
    allowed = allowed_errors(prepared, precision)
    per_image = np.max(np.abs(outputs.astype(np.float64) - ref), axis=1) / prepared.scale
    over = per_image / allowed
    worst = int(np.argmax(over))
    off = np.flatnonzero(over > 1)
    cos = cosine_rows(outputs, ref)
    cos_worst = int(np.argmin(cos))
    need_cos = tolerance(SECTION, "min_cosine")
    if precision == "fp16":  # the cosine gate follows the fp16-weights floor too
        cos16 = _filled(np.asarray(prepared.cos_floors_fp16w if prepared.cos_floors_fp16w is not None
                                   else np.full(len(ref), np.nan)))
        need_cos = min(need_cos, 1.0 - tolerance(SECTION, "fp16_floor_multiple") * float(np.max(cos16)))
    agree = float(np.mean(np.argmax(outputs, 1) == np.argmax(ref, 1)))
    figures = dict(images=len(ref), rel_max_error=rel_max_error(outputs, ref), worst_file=files[worst].name,
                   worst_rel_error=float(per_image[worst]), worst_allowed=float(allowed[worst]),
                   # over the fp32 floor whatever was declared: what the report's floor column means
                   worst_error_over_floor=float(per_image[worst] / allowed32[worst] * k),
                   floor_images_measured=int(np.count_nonzero(~np.isnan(prepared.floors))),
                   min_cosine=float(cos[cos_worst]), min_cosine_file=files[cos_worst].name,
                   top1_agreement=agree, images_off=len(off), files_off=[files[i].name for i in off[:5]],
                   declared_precision=precision)
    if prepared.floors_fp16w is not None and np.any(~np.isnan(prepared.floors_fp16w)):
        figures["error_over_fp16_weights_floor"] = float(np.max(per_image / _fp16w_floors(prepared)))
    record(**figures)
    if len(off):
        floor = allowed[worst] / k
        what = f"max|out - ref| / max|ref| of {card.id} runtime output {files[worst].name}"
        where = f"{files[worst]} vs {prepared.folder / REFERENCE} row {worst}"
        if precision == "fp16":
            m16 = tolerance(SECTION, "fp16_floor_multiple")
            raise CheckFailure(message(
                what, f"{per_image[worst]:.3g}", f"<= {allowed[worst]:.3g} ({m16:g} x this image's fp16-weights floor "
                f"{_fp16w_floors(prepared)[worst]:.3g}, declared fp16)", where,
                cause=f"{len(off)} of {len(ref)} output file(s) depart from the reference by more than fp16-stored "
                      f"weights cost (top-1 agreement {agree:.3f}): fp16 arithmetic or a different function"), figures)
        cause = reduced_precision_cause(prepared, per_image, off, agree, float(cos[cos_worst]), need_cos)
        raise CheckFailure(message(
            what, f"{per_image[worst]:.3g}",
            f"<= {allowed[worst]:.3g} ({k:g} x this image's fp32 noise floor {floor:.3g}, at least "
            f"{tolerance(SECTION, 'rel_min'):g})", where,
            cause=cause or f"{len(off)} of {len(ref)} output file(s) depart from the reference "
                           f"(first: {', '.join(files[i].name for i in off[:3])}; top-1 agreement {agree:.3f})"),
            figures)
    if cos[cos_worst] < need_cos:
        raise CheckFailure(message(
            f"cosine of {card.id} runtime output {files[cos_worst].name} with the reference", f"{cos[cos_worst]:.7f}",
            f">= {need_cos}", f"{files[cos_worst]} vs {prepared.folder / REFERENCE} row {cos_worst}",
            cause="this image's logits point elsewhere: a mixed-up or stale output file"), figures)


def evaluation(prepared: Prepared, outputs: np.ndarray) -> acc.Evaluation:
    return acc.Evaluation.from_logits(prepared.meta.get("data", "?"), prepared.names, list(prepared.labels),
                                      {"runtime": outputs, "reference": prepared.reference},
                                      skipped=prepared.meta.get("skipped", []))


def check_accuracy(card: ModelCard, prepared: Prepared, outputs: np.ndarray, record, source: str | None = None) -> str:
    """Top-1/top-5 vs labels; held to the card only with real weights on ImageNet.

    Returns what was judged ('card' or 'recorded only: <why>').
    """
    ev = evaluation(prepared, outputs)
    record(top1_pct=round(100 * ev.accuracy("runtime", 1), 3), top5_pct=round(100 * ev.accuracy("runtime", 5), 3),
           reference_top1_pct=round(100 * ev.accuracy("reference", 1), 3),
           reference_top5_pct=round(100 * ev.accuracy("reference", 5), 3), images=ev.n)
    if prepared.meta.get("weights", {}).get("kind") != "checkpoint":
        why = "recorded only: the reference has no real weights (seeded default), so the card's figures do not apply"
    elif not prepared.meta.get("imagenet"):
        why = "recorded only: not ImageNet validation images"
    else:
        row, how = acc.claimed_row(card, 100 * ev.accuracy("reference", 1), source)
        acc.check_against_card(card, ev, "runtime", record, source=source, row=row,
                               how=f"the prepared reference's row ({how})")
        return "card"
    record(judged=why)
    return why


def write_results(path: Path, model_id: str, records: list[dict], settings: dict, exitstatus: int,
                  started: float | None = None) -> dict:
    """results.json in the project's format (harness/report/results.py), one test per check."""
    collector = ResultsCollector(settings)
    if started is not None:
        collector.started = started
    for r in records:
        collector.tests[r["nodeid"]] = {"nodeid": r["nodeid"], "outcome": r["outcome"], "duration_s": r["duration_s"],
                                        "figures": jsonable(r["figures"]), "model": model_id, "suite": "bridge",
                                        **({"message": r["message"]} if r.get("message") else {})}
    return collector.write(path, complete=True, exitstatus=exitstatus)
