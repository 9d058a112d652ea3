"""The session's workbench: settings, selected cards, images, reference models, caches.

Suites never build models or sessions themselves: they ask fixtures, which ask the lab,
which caches (in memory for the session, on disk across sessions and xdist workers).
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from . import manifest as manifest_mod
from . import models as models_mod
from .cache import ArtifactCache, Memo, T, array_digest, file_sha256, shared_from_environment
from .errors import ConfigError, InputError, OptionError, ZooconformError
from .phases import CACHE_PHASES, MEMO_PHASES, PhaseLog
from .transforms import reference_batch, reference_transform
from .zoo import ModelCard, load_zoo, select

DEFAULT_EVAL_IMAGES = 200
DEFAULT_CALIB_IMAGES = 200
IMAGENET_CALIB_IMAGES = 1000  # the seeds: ~1000 images, every class represented


@dataclass
class Settings:
    tier: str = "smoke"
    models: list[str] | None = None
    artifacts: Path | None = None
    weights_dir: Path | None = None
    imagenet: Path | None = None
    report_dir: Path = Path("reports")
    cache_dir: Path | None = None
    eval_images: int | None = None
    calib_images: int | None = None
    threads: int | None = None
    profile: str | None = None
    zoo_dir: Path | None = None
    extra: dict = field(default_factory=dict)
    # the thread count as the session planned it (--threads, or the xdist share) once a lone
    # xdist worker has taken more (Lab.take_threads); None until then. Numbers cached on disk
    # are keyed by it: see Lab.take_threads
    planned_threads: int | None = None

    def cache_threads(self) -> int | None:
        """The thread count that keys numbers cached on disk (the planned one)."""
        return self.planned_threads or self.threads


MAX_THREADS = 4096


def _count_option(option: str, value, hi: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (hi is not None and value > hi):
        raise OptionError(option, value, f"expected a whole number >= 1{f' and <= {hi}' if hi else ''}",
                          fix=f"pass {option} N with N >= 1, or leave it out for the default")


def _writable_folder(option: str, folder: Path, fix: str) -> None:
    """``folder`` can hold our files (created if missing), tried rather than read from the
    permission bits (root, read-only mounts and immutable folders defeat those)."""
    import tempfile

    if folder.exists() and not folder.is_dir():
        raise OptionError(option, folder, "is not a directory", fix=fix)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OptionError(option, folder, f"cannot write there ({e.strerror or e})", fix=fix) from None


def validate_settings(settings: Settings) -> None:
    """Options that cannot work are usage errors naming the option, before anything runs."""
    _count_option("--threads", settings.threads, MAX_THREADS)
    _count_option("--eval-images", settings.eval_images)
    _count_option("--calib-images", settings.calib_images)
    wd = settings.weights_dir
    if wd is not None and not Path(wd).is_dir():
        raise OptionError("--weights-dir", wd, "does not exist" if not Path(wd).exists() else "is not a directory",
                          fix="point it at the folder holding <model id>.pth / .safetensors "
                              "(without --weights-dir the suite uses seeded random-init models)")
    if settings.imagenet is not None and not Path(settings.imagenet).is_dir():
        raise OptionError("--imagenet", settings.imagenet,
                          "does not exist" if not Path(settings.imagenet).exists() else "is not a directory",
                          fix="point it at the folder holding val/ and val_label.txt")


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


def _weights_dir_gaps(weights_dir: Path | None, cards: list[ModelCard]) -> list[str]:
    """One line per selected model that --weights-dir holds no weights for: it is judged on the
    seeded default, which a user who gave the folder must be told (issue 21)."""
    if weights_dir is None:
        return []
    return [f"--weights-dir {weights_dir} has no {c.id}{'/'.join(WEIGHT_SUFFIXES)}: {c.id} uses the seeded "
            "random-init default (its accuracy checks skip); add the file or leave the model out with --models"
            for c in cards if not any((Path(weights_dir) / f"{c.id}{s}").is_file() for s in WEIGHT_SUFFIXES)]


class Lab:
    def __init__(self, settings: Settings, check_folders: bool = False):
        """``check_folders``: also make sure the report and cache folders can be written (the
        plugin asks for it, so a read-only folder is a usage error before the run, not an
        INTERNALERROR after it that loses the results)."""
        validate_settings(settings)
        if check_folders:
            _writable_folder("--report-dir", Path(settings.report_dir),
                             "pass --report-dir DIR to a writable folder")
        self.settings = settings
        self.zoo = load_zoo(settings.zoo_dir) if settings.zoo_dir else load_zoo()
        self.cards: list[ModelCard] = select(self.zoo, settings.models, settings.tier)
        self.cache = ArtifactCache(settings.cache_dir, *shared_from_environment())
        if check_folders:
            _writable_folder("--cache-dir", self.cache.root,
                             "pass --cache-dir DIR (or set ZOOCONFORM_CACHE) to a writable folder")
        self.manifest_error: ZooconformError | None = None
        self.manifest = manifest_mod.empty()
        if settings.artifacts:
            try:
                self.manifest = manifest_mod.load(settings.artifacts, list(self.zoo))
            except ConfigError as e:
                # reported by every check that consumes the manifest; the rest of the run goes on
                self.manifest_error = e
        self.data_problems: list[str] = []
        self.data_problems.extend(_weights_dir_gaps(settings.weights_dir, self.cards))
        self._images: dict[str, data_mod.ImageSet] = {}
        self._split_problem: InputError | None = None  # an --imagenet folder too small for its calibration split
        # every in-memory memo of the session: bounded by bytes per kind, least recently used
        # out first (a dropped entry is rebuilt, a reference from the on-disk cache in about a second)
        self.memos = Memo(MEMO_BUDGETS, DEFAULT_MEMO_BYTES)
        self._memo_model: str | None = None  # the model whose memos keep_only_model kept last
        # id(module) -> (weak reference, reference_key) of the references this lab built (model_key)
        self._built_references: dict[int, tuple[weakref.ref, dict]] = {}
        # where the time goes, per model and phase (the plugin points it at the run's phases.jsonl)
        self.phase = PhaseLog()
        self.cache.around_build = self._cache_phase
        if settings.threads:
            torch.set_num_threads(settings.threads)

    def memo(self, kind: str, key: Hashable, build: Callable[[], T],
             size_of: Callable[[Any], int] | None = None, valid: Callable[[Any], bool] | None = None) -> T:
        """The session's memo of ``key`` under ``kind`` (``build()`` makes it when absent): an LRU
        per kind within its byte budget (``MEMO_BUDGETS``; ``size_of`` defaults to
        :func:`harness.cache.approx_bytes`; ``valid(value)`` False rebuilds a stale entry).
        Every in-memory cache of the harness lives here. A build of a kind in
        ``harness.phases.MEMO_PHASES`` is timed as that phase."""
        phase = MEMO_PHASES.get(kind)
        if phase is None:
            return self.memos.get(kind, key, build, size_of, valid)

        def timed() -> T:
            with self.phase(phase, self._model_in(key)):
                return build()

        return self.memos.get(kind, key, timed, size_of, valid)

    def _cache_phase(self, kind: str, key: dict) -> AbstractContextManager[None]:
        phase = CACHE_PHASES.get(kind)
        return self.phase(phase, self._model_in(key)) if phase is not None else nullcontext()

    def keep_only_model(self, model: str) -> None:
        """Drop every memo that is about another model (its key names one: references, logits,
        studies, headers), once per change of model; memos of no model (host figures, images
        shared by a preprocessing) stay. Tests run model by model (harness/plugin.py
        in_model_order), so a serial run holds one model's memos, not every model's up to the
        kinds' budgets; the freed heap goes back to the system (malloc_trim)."""
        if model == self._memo_model:
            return
        self._memo_model = model
        dropped = self.memos.drop(lambda key: self._model_in(key) not in (None, model))
        if dropped:
            gc.collect()
            release_free_heap()

    def _model_in(self, key: Any) -> str | None:
        """The model a memo or cache key is about (its id, or a tuple / dict holding it); None:
        the enclosing phase's model, else the test's (harness/phases.py)."""
        if isinstance(key, dict):
            key = key.get("model")
        parts = key if isinstance(key, tuple) else (key,)
        return next((p for p in parts if isinstance(p, str) and p in self.zoo), None)

    # --- artifacts ----------------------------------------------------------------------
    def artifacts(self, card: ModelCard) -> manifest_mod.ModelArtifacts:
        if self.manifest_error is not None:
            raise self.manifest_error
        return self.manifest.for_model(card.id)

    def checkpoint_for(self, card: ModelCard) -> Path | None:
        """Manifest ``checkpoint`` first, then ``--weights-dir/<id>.{pth,safetensors}``."""
        ckpt = self.artifacts(card).get("checkpoint")
        if ckpt is not None:
            return ckpt
        wd = self.settings.weights_dir
        if wd:
            for suffix in WEIGHT_SUFFIXES:
                p = Path(wd) / f"{card.id}{suffix}"
                if p.is_file():
                    return p
        return None

    @property
    def uses_real_data(self) -> bool:
        return self.settings.imagenet is not None

    # --- images -------------------------------------------------------------------------
    def images(self, split: str) -> data_mod.ImageSet:
        """``calib`` or ``eval``: embedded by default, else split from the ImageNet folder."""
        if split not in self._images:
            if self.settings.imagenet:
                full = data_mod.imagenet(self.settings.imagenet)
                asked = self.settings.calib_images or IMAGENET_CALIB_IMAGES
                calib, rest = data_mod.calibration_subset(full, asked)
                if not rest.samples:  # accuracy reads both splits; checks of the eval split raise this
                    self._split_problem = InputError(
                        self.settings.imagenet,
                        f"the folder has {len(full)} labelled image(s) and calibration takes {len(calib)} of them "
                        f"(--calib-images {asked}{'' if self.settings.calib_images else ', the default'}), "
                        f"leaving 0 for evaluation",
                        fix=f"pass --calib-images N with N < {len(full)} (e.g. {max(1, len(full) // 2)}), "
                            f"or use a folder with more images")
                if self.settings.eval_images:
                    rest.samples = _spread(rest.samples, self.settings.eval_images)
                self._images = {"calib": calib, "eval": rest}
                self.data_problems.extend(full.problems)
            else:
                n = self.settings.eval_images if split == "eval" else self.settings.calib_images
                default = DEFAULT_EVAL_IMAGES if split == "eval" else DEFAULT_CALIB_IMAGES
                self._images[split] = data_mod.embedded(split, n or default)
        return self._images[split]

    def inputs(self, card: ModelCard, split: str = "eval",
               limit: int | None = None) -> tuple[torch.Tensor, list[data_mod.Sample]]:
        """The card's reference preprocessing of the split, NCHW float32, plus the samples kept.

        Undecodable images are dropped and reported in ``data_problems``.
        """
        def decode(samples: list[data_mod.Sample]) -> tuple[torch.Tensor, list[data_mod.Sample]]:
            if not samples and self._split_problem is not None:
                raise self._split_problem  # not "the model predicts one class" on 0 images
            imgs, kept, problems = data_mod.load_images(samples)
            self.data_problems.extend(p for p in problems if p not in self.data_problems)
            return reference_batch(imgs, card.preprocess), kept

        def build() -> tuple[torch.Tensor, list[data_mod.Sample]]:
            samples = self.images(split).samples[:limit] if limit else self.images(split).samples
            if self.uses_real_data:  # a folder's files can change under the same names: decoded each session
                return decode(samples)
            position = {id(s): i for i, s in enumerate(samples)}

            def arrays() -> dict[str, np.ndarray]:
                x, kept = decode(samples)
                return {"x": x.numpy(), "kept": np.array([position[id(s)] for s in kept], np.int64)}

            got = self.cache.arrays("inputs", self.embedded_inputs_key(card, split, limit), arrays)
            return torch.from_numpy(np.ascontiguousarray(got["x"])), [samples[int(i)] for i in got["kept"]]

        return self.memo("inputs", (card.preprocess, split, limit), build, _tensor_bytes)

    def embedded_inputs_key(self, card: ModelCard, split: str, limit: int | None) -> dict:
        """The on-disk key of the embedded images' preprocessed tensor: the embedded images are
        made by code (harness/data.py) from package data, so their names, the card's preprocessing,
        that code and the libraries it calls say what the tensor is. A warm rerun reads it instead
        of decoding and resizing (~5 s per model and split on 2 cores)."""
        from importlib.metadata import version

        images = self.images(split)
        return {"images": images.digest(), "count": len(images.samples), "split": split, "limit": limit,
                "preprocess": repr(card.preprocess), "code": self.memo("code_digest", INPUTS_CODE_FILES, _inputs_code_digest,
                                                                       lambda _: 100),
                "versions": {lib: version(lib) for lib in ("numpy", "pillow", "scikit-image", "torchvision")},
                "torch": torch.__version__.split("+")[0]}

    def iter_batches(self, card: ModelCard, split: str,
                     batch_size: int = 32) -> Iterator[tuple[torch.Tensor, list[data_mod.Sample]]]:
        """Streaming version of :meth:`inputs` for large (real ImageNet) sets."""
        tf = reference_transform(card.preprocess)
        samples = self.images(split).samples
        for i in range(0, len(samples), batch_size):
            imgs, kept, problems = data_mod.load_images(samples[i:i + batch_size])
            self.data_problems.extend(problems)
            if kept:
                yield torch.stack([tf(im) for im in imgs]), kept

    # --- reference models ---------------------------------------------------------------
    def reference(self, card: ModelCard) -> torch.nn.Module:
        """Checkpoint weights when given, else the seeded, recalibrated default (cached on disk)."""
        def build() -> torch.nn.Module:
            ckpt = self.checkpoint_for(card)
            model = (models_mod.build_reference(card, checkpoint=ckpt) if ckpt is not None
                     else self._recalibrated(card))
            # the module's identity on disk, for the numbers computed from it (model_key)
            self._built_references[id(model)] = (weakref.ref(model), self.reference_key(card))
            return model

        return self.memo("references", card.id, build, _module_bytes)

    def reference_key(self, card: ModelCard) -> dict:
        """What the card's reference model is made of, as a cache key, without building it: the
        checkpoint's digest, or the recipe of the seeded, recalibrated default."""
        import timm

        ckpt = self.checkpoint_for(card)
        base = {"model": card.id, "arch": card.timm_arch, "byob": card.byob,
                "timm": timm.__version__, "torch": torch.__version__.split("+")[0]}
        if ckpt is not None:
            ckpt = Path(ckpt)
            st = ckpt.stat()  # a rewritten checkpoint (size or mtime) is read again
            sha = self.memo("checkpoint_digest", (str(ckpt.resolve()), st.st_size, st.st_mtime_ns),
                            lambda: file_sha256(ckpt), lambda _: 100)
            return {**base, "checkpoint": sha[:24]}
        calib_set = data_mod.embedded("calib", DEFAULT_CALIB_IMAGES)
        return {**base, "seed": models_mod.seed_for(card.id), "calib": calib_set.digest(),
                "preprocess": repr(card.preprocess), "recipe": models_mod.RECIPE}

    def model_key(self, model: torch.nn.Module) -> dict | None:
        """The cache key of ``model`` if it is a reference this lab built (``reference_key``), else
        None: numbers computed from any other module (a variant, a planted defect) are not
        cached on disk, since its weights alone do not say what its forward computes."""
        entry = self._built_references.get(id(model))
        if entry is None or entry[0]() is not model:  # an id can be reused once its object is gone
            return None
        return entry[1]

    def _recalibrated(self, card: ModelCard) -> torch.nn.Module:
        """The seeded default with its recalibrated BatchNorms, cached on disk as the BatchNorm
        tensors alone (what ``randomise_bn`` and ``recalibrate_bn`` set; ~1 MB where the whole state
        is 50-440 MB) and the digest of the whole state: a load re-creates the seeded architecture,
        puts the tensors in and checks the digest, so an entry built where the seeded init differs
        (another host's kernels) is rebuilt here, never used as a different model."""
        calib_set = data_mod.embedded("calib", DEFAULT_CALIB_IMAGES)
        key = {**self.reference_key(card), "stored": "batchnorm tensors + state digest"}

        def build(folder: Path) -> None:
            import json

            from safetensors.torch import save_file

            imgs, _, _ = data_mod.load_images(calib_set.samples)
            calib = reference_batch(imgs, card.preprocess)
            model = models_mod.build_reference(card, calib=calib)
            save_file(models_mod.batchnorm_tensors(model), str(folder / "batchnorm.safetensors"))
            (folder / "reference.json").write_text(json.dumps({"state_digest": models_mod.state_digest(model)}))

        for attempt in (1, 2):
            model = models_mod.create_architecture(card)
            folder = self.cache.entry("reference", key, build)
            try:
                problem = models_mod.load_batchnorm_tensors(model, folder / "batchnorm.safetensors",
                                                            folder / "reference.json")
            except Exception as e:  # verified bytes that still do not load: rebuild once, with a note
                problem = f"did not load ({type(e).__name__}: {str(e)[:120]})"
            if problem is None:
                return model.eval()
            if attempt == 2:
                raise RuntimeError(f"the seeded reference of {card.id} was rebuilt in {folder} and still "
                                      f"{problem}: the seeded init is not reproducible on this host")
            self.cache.discard("reference", key, problem)
        raise AssertionError("unreachable")

    def numerics_key(self) -> dict:
        """What changes float results of the same model on the same inputs on this machine: the
        torch version, the CPU kernels it dispatches to, and its thread count (as planned:
        ``take_threads``)."""
        return {"torch": torch.__version__.split("+")[0], "cpu": torch.backends.cpu.get_cpu_capability(),
                "threads": self.settings.planned_threads or torch.get_num_threads()}

    def take_threads(self, threads: int) -> None:
        """Run torch, and the sessions made from now on, on ``threads``: an xdist worker left
        running alone takes every CPU (harness/host.py WorkerCpuShare). Cached numbers stay
        keyed by the planned count (``Settings.planned_threads``): whether a computation ran
        alone depends on the other worker's timing, and keying it by that made a warm rerun
        recompute resnest50's evaluation (48 s) that the cold run had cached at the other count.
        Measured (2026-12-02): ORT's outputs of the smoke models' fp32, QDQ-simulated and int8
        files were bitwise the same at 1 and 2 threads; torch's logits moved by <= 3e-8."""
        if self.settings.planned_threads is None:
            self.settings.planned_threads = self.settings.threads
        self.settings.threads = threads
        torch.set_num_threads(threads)

    def reference_logits(self, card: ModelCard, split: str = "eval") -> np.ndarray:
        """fp32 torch logits of the reference model on the split: in the session's memo, and on
        disk keyed by the reference (``reference_key``), the split's images and preprocessing and
        ``numerics_key``; a warm run neither builds the reference nor decodes the images."""
        def compute() -> np.ndarray:
            x, _ = self.inputs(card, split)
            return torch_logits(self.reference(card), x)

        def build() -> np.ndarray:
            images = self.images(split)
            key = {"reference": self.reference_key(card), "images": images.digest(), "count": len(images.samples),
                   "split": split, "preprocess": repr(card.preprocess), **self.numerics_key(),
                   "code": REFERENCE_LOGITS_VERSION}
            return self.cache.arrays("reference-logits", key, lambda: {"logits": compute()})["logits"]

        return self.memo("reference_logits", (card.id, split), build)


def reference_run_key(model: torch.nn.Module, x: np.ndarray | torch.Tensor, lab: Any, batch: int,
                      code: int) -> dict | None:
    """The disk key of numbers computed by running ``model`` on ``x``, or None where they are not
    cached on disk: no lab cache, or a module ``lab`` did not build as a reference
    (``Lab.model_key``: a variant or a planted defect is recomputed every session). Keyed by the
    reference, a digest of its weights as they are now (a reference edited in place is not the
    cached one), the inputs, the batch, this torch's numerics (``Lab.numerics_key``) and ``code``,
    the computing code's version. The fp64 floors and ``cached_torch_logits`` key on it."""
    model_key = getattr(lab, "model_key", None)
    ident = model_key(model) if model_key is not None else None
    if ident is None or getattr(lab, "cache", None) is None:
        return None
    inputs = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return {"model": ident.get("model"), "reference": ident, "weights": models_mod.state_digest(model),
            "inputs": array_digest(inputs), "batch": batch, **lab.numerics_key(), "code": code}


def cached_torch_logits(model: torch.nn.Module, x: np.ndarray | torch.Tensor, lab: Any = None,
                        batch_size: int = 32) -> np.ndarray:
    """``torch_logits`` of ``model`` on ``x``; on disk under ``reference_run_key``. The
    preprocessing checks' effect on predictions runs the reference on the same images in every
    session (resnest50: ~9 s of a warm rerun)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    key = reference_run_key(model, xt, lab, batch_size, REFERENCE_LOGITS_VERSION)
    if key is None:
        return torch_logits(model, xt, batch_size)
    return lab.cache.arrays("reference-logits", key, lambda: {"logits": torch_logits(model, xt, batch_size)})["logits"]


# Part of the key of the embedded images' cached tensors: the digest of the code that makes them
# (a change to how an image is synthesised, decoded or preprocessed is a new entry)
INPUTS_CODE_FILES = ("data.py", "transforms.py")


def _inputs_code_digest() -> str:
    return hashlib.sha256(b"".join((Path(__file__).parent / n).read_bytes() for n in INPUTS_CODE_FILES)).hexdigest()[:16]

# Part of the key of every number the lab caches on disk from a reference: a change to how it is
# computed (torch_logits' batching, the inputs' preprocessing code) must bump it
REFERENCE_LOGITS_VERSION = 1


INPUTS_CACHE_BYTES = 1 << 30       # ~1.7x the 200 eval images at 416 px (resnest269), 9x at 224 px
REFERENCES_CACHE_BYTES = 2 << 30   # the largest reference is ~0.5 GB (hrnet_w64 128 M params)
DEFAULT_MEMO_BYTES = 256 << 20     # any other kind: logits, studies, reports, digests (KB to a few MB each)
# Byte budgets of the lab's memo kinds (Lab.memo); a kind not listed gets DEFAULT_MEMO_BYTES.
MEMO_BUDGETS: dict[str, int] = {
    "inputs": INPUTS_CACHE_BYTES,
    "references": REFERENCES_CACHE_BYTES,
    # the HRNet card's fusion variant: a deep copy of a reference (one at a time)
    "export.fusion_variant": 1,
    # ONNX graphs without their external weights (a self-contained file holds its weights)
    "export.header": 512 << 20,
    # logits on the eval split: 0.8 MB per file on the embedded set, ~200 MB each with an
    # ImageNet folder (49 000 images); a model's checks read the same runs one after another
    "quant.fp32_run": 1 << 30,
    "quant.int8_run": 2 << 30,
}


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc malloc_trim): without it a process
    keeps the peak of every model it ran as its resident size. False where there is no glibc.
    The process's own symbols hold libc's: no ``ctypes.util.find_library``, which runs
    ``ldconfig`` in a subprocess (19 ms) at every change of model."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # no dynamic loader to ask, or a libc without malloc_trim (musl)
        return False


def _module_bytes(model: torch.nn.Module) -> int:
    return sum(t.element_size() * t.nelement() for t in list(model.parameters()) + list(model.buffers()))


def _tensor_bytes(value: tuple[torch.Tensor, list]) -> int:
    return value[0].element_size() * value[0].nelement()


def torch_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            outs.append(model(chunk).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 1000), np.float32)


def _spread(samples: list, n: int) -> list:
    """n samples spread evenly over the list (deterministic)."""
    if n >= len(samples):
        return samples
    idx = np.linspace(0, len(samples) - 1, n).round().astype(int)
    return [samples[i] for i in idx]
