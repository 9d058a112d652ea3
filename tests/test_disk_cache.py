"""Numbers cached on disk across sessions (issue 19): arrays in the artifact cache, the
reference logits and the fp64 noise floors. A hit skips the work, a changed key misses, a
corrupt file is rebuilt with a note (never a crash), two processes build one entry once."""
from __future__ import annotations

import json
import multiprocessing as mp
import time

import numpy as np
import pytest
from _kit import conv_classifier, count_calls

from harness.cache import MARKER, SHARED_CACHE_ENV, ArtifactCache


@pytest.fixture(autouse=True)
def _no_shared_cache(monkeypatch):
    # these tests count what a lab builds and finds on disk: tests/conftest.py's shared folder,
    # filled by whichever test ran first, would serve them entries they expect to build
    monkeypatch.delenv(SHARED_CACHE_ENV, raising=False)

# torch and the lab are imported inside the tests that use them: the spawned writers of
# test_two_processes_write_one_entry_once import this module, in seconds

KEY = {"model": "m", "weights": "abc", "inputs": "def", "torch": "x"}


def _arrays():
    return {"ref32": np.arange(12, dtype=np.float32).reshape(3, 4), "ref64": np.linspace(0, 1, 12).reshape(3, 4)}


def test_arrays_are_built_once_then_read_back_exactly(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []
    first = cache.arrays("floor", KEY, lambda: (calls.append(1), _arrays())[1])
    again = ArtifactCache(tmp_path).arrays("floor", KEY, lambda: (calls.append(2), _arrays())[1])  # a new session
    assert calls == [1]
    for name, want in _arrays().items():
        assert again[name].dtype == want.dtype and np.array_equal(again[name], want) and np.array_equal(first[name], want)
    assert sorted(p.name for p in cache.folder("floor", KEY).glob("*.npy")) == ["ref32.npy", "ref64.npy"]


def test_a_changed_key_misses(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []
    cache.arrays("floor", KEY, lambda: (calls.append("a"), _arrays())[1])
    cache.arrays("floor", {**KEY, "torch": "y"}, lambda: (calls.append("b"), _arrays())[1])  # another torch
    cache.arrays("floor", {**KEY, "weights": "abd"}, lambda: (calls.append("c"), _arrays())[1])  # other weights
    assert calls == ["a", "b", "c"]


def test_a_corrupt_file_is_rebuilt_with_a_note(tmp_path):
    cache = ArtifactCache(tmp_path)
    folder = cache.folder("floor", KEY)
    cache.arrays("floor", KEY, _arrays)
    npy = folder / "ref64.npy"
    npy.write_bytes(npy.read_bytes()[:40])  # truncated by a crash or a full disk
    calls = []
    got = cache.arrays("floor", KEY, lambda: (calls.append(1), _arrays())[1])
    assert calls == [1] and np.array_equal(got["ref64"], _arrays()["ref64"])
    assert len(cache.notes) == 1 and str(folder) in cache.notes[0] and "corrupt" in cache.notes[0]


def test_a_file_that_verifies_but_does_not_load_is_rebuilt_with_a_note(tmp_path):
    """Bytes that match the marker yet are no .npy (written by something else, or a marker
    rewritten to match): np.load refuses, the entry is discarded and rebuilt, never raised."""
    cache = ArtifactCache(tmp_path)
    cache.arrays("floor", KEY, _arrays)
    folder = cache.folder("floor", KEY)
    (folder / "ref32.npy").write_bytes(b"not a numpy file")
    marker = json.loads((folder / MARKER).read_text())
    from harness.cache import file_sha256

    marker["files"]["ref32.npy"] = {"size": 16, "sha256": file_sha256(folder / "ref32.npy")}
    (folder / MARKER).write_text(json.dumps(marker))
    calls = []
    got = cache.arrays("floor", KEY, lambda: (calls.append(1), _arrays())[1])
    assert calls == [1] and np.array_equal(got["ref32"], _arrays()["ref32"])
    assert cache.notes and "did not load" in cache.notes[-1]


def test_pickled_objects_are_refused_not_stored(tmp_path):
    cache = ArtifactCache(tmp_path)
    with pytest.raises(TypeError, match="Python objects"):
        cache.arrays("floor", KEY, lambda: {"bad": np.array([{"a": 1}], dtype=object)})
    assert not cache.folder("floor", KEY).exists()


def _slow_arrays(log):
    with open(log, "a") as f:
        f.write("x")
    time.sleep(0.5)
    return _arrays()


def _arrays_worker(root, log, out):
    got = ArtifactCache(root).arrays("floor", KEY, lambda: _slow_arrays(log))
    np.save(out, got["ref64"], allow_pickle=False)


def test_two_processes_write_one_entry_once(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "builds.log"
    outs = [tmp_path / f"out{i}.npy" for i in range(2)]
    procs = [ctx.Process(target=_arrays_worker, args=(tmp_path / "c", log, out)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text() == "x"  # the second waited on the FileLock and read the first's entry
    for out in outs:
        assert np.array_equal(np.load(out, allow_pickle=False), _arrays()["ref64"])
    leftovers = [p.name for p in (tmp_path / "c" / "floor").iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary build folders left behind: {leftovers}"


# --- the lab's reference logits and the export suite's fp64 floors ----------------------------

def _tiny():
    """Stands in for a reference: any NCHW image batch to 10 logits, in a second."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 7, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def _lab(tmp_path, built: list, eval_images: int = 4):
    from harness.lab import Lab, Settings

    lab = Lab(Settings(models=["repvgg_a0"], eval_images=eval_images, cache_dir=tmp_path / "cache"))

    def recalibrated(card):
        built.append(card.id)
        return _tiny()

    lab._recalibrated = recalibrated  # type: ignore[method-assign]  # no 200-image BN recalibration here
    return lab


def test_reference_logits_come_from_disk_without_building_the_reference(tmp_path):
    built: list = []
    lab = _lab(tmp_path, built)
    card = lab.cards[0]
    first = lab.reference_logits(card)
    assert built == ["repvgg_a0"] and first.shape == (4, 10)
    again_lab = _lab(tmp_path, built)  # the next session
    again = again_lab.reference_logits(again_lab.cards[0])
    assert built == ["repvgg_a0"], "a warm run rebuilt the reference for its logits"
    assert np.array_equal(again, first)
    other = _lab(tmp_path, built, eval_images=3)  # another eval split: another key
    assert other.reference_logits(other.cards[0]).shape == (3, 10) and built == ["repvgg_a0"] * 2


def _count_logits(monkeypatch) -> list:
    from harness.export import checks as ec

    return count_calls(monkeypatch, ec, "torch_logits")


def test_fp64_floor_of_the_lab_s_reference_is_read_from_disk(tmp_path, monkeypatch):
    from harness.export import checks as ec

    calls = _count_logits(monkeypatch)
    lab = _lab(tmp_path, [])
    card = lab.cards[0]
    model, (x, _) = lab.reference(card), lab.inputs(card, "eval")
    ref32, ref64 = ec.reference_and_floor(model, x, lab)
    assert calls == [1] and ref64.dtype == np.float64
    assert len(list((lab.cache.root / "fp64-floor").iterdir())) == 2  # the entry and its lock
    lab2 = _lab(tmp_path, [])
    m2, (x2, _) = lab2.reference(lab2.cards[0]), lab2.inputs(lab2.cards[0], "eval")
    a, b = ec.reference_and_floor(m2, x2, lab2)
    assert calls == [1], "the next session recomputed the fp64 floor"
    assert np.array_equal(a, ref32) and np.array_equal(b, ref64)


def test_fp64_floor_of_an_edited_or_foreign_module_is_not_taken_from_disk(tmp_path, monkeypatch):
    """A reference edited in place (a planted defect) has other weights, so another key; a
    module the lab did not build (a variant, a planted forward) is never cached on disk."""
    import torch

    from harness.export import checks as ec

    calls = _count_logits(monkeypatch)
    lab = _lab(tmp_path, [])
    card = lab.cards[0]
    model, (x, _) = lab.reference(card), lab.inputs(card, "eval")
    _, clean64 = ec.reference_and_floor(model, x, lab)
    lab2 = _lab(tmp_path, [])
    edited = lab2.reference(lab2.cards[0])
    with torch.no_grad():
        edited[0].weight[0] *= 1.5
    _, edited64 = ec.reference_and_floor(edited, lab2.inputs(lab2.cards[0], "eval")[0], lab2)
    assert calls == [1, 1] and not np.array_equal(edited64, clean64)
    foreign = _tiny()
    assert lab2.model_key(foreign) is None
    ec.reference_and_floor(foreign, x, lab2)
    assert calls == [1, 1, 1]
    assert len(list((lab.cache.root / "fp64-floor").iterdir())) == 4  # two entries (and locks), not three


def test_a_rewritten_checkpoint_is_another_reference(tmp_path):
    """With --weights-dir the key holds the checkpoint's digest: new weights in the same file
    are not judged on the logits of the old ones."""
    import torch
    from safetensors.torch import save_file

    from harness.lab import Lab, Settings
    from harness.models import create_architecture

    weights = tmp_path / "weights"
    weights.mkdir()

    def lab():
        return Lab(Settings(models=["repvgg_a0"], eval_images=2, cache_dir=tmp_path / "cache", weights_dir=weights))

    first = lab()
    card = first.cards[0]
    sd = {k: v.contiguous() for k, v in create_architecture(card).state_dict().items()}
    save_file(sd, str(weights / "repvgg_a0.safetensors"))
    before = first.reference_logits(card)
    sd["head.fc.bias"] = sd["head.fc.bias"] + torch.arange(1000, dtype=torch.float32)  # the retrained head
    save_file(sd, str(weights / "repvgg_a0.safetensors"))
    after = lab().reference_logits(card)
    assert not np.allclose(after, before)
    assert np.array_equal(lab().reference_logits(card), after)  # and the new weights' logits are reused
    assert len([p for p in (tmp_path / "cache" / "reference-logits").iterdir() if p.is_dir()]) == 2


def test_a_lone_worker_taking_every_cpu_changes_no_cache_key(tmp_path):
    """An xdist worker left alone runs on every CPU (Lab.take_threads); whether it was alone
    depends on the other worker's timing, so keys that followed it made a warm rerun recompute
    what the cold run had cached (resnest50's evaluation, 48 s)."""
    import torch

    from harness.quant.checks import eval_cache_key

    lab, threads_before = _lab(tmp_path, []), torch.get_num_threads()
    lab.settings.threads = 1  # the xdist share of a 2-core machine
    torch.set_num_threads(1)
    card, onnx_file = lab.cards[0], tmp_path / "model.onnx"
    conv_classifier(onnx_file, 8)  # the key digests its bytes and sizes its run batch
    before = (lab.numerics_key(), eval_cache_key(lab, card, onnx_file, None))
    try:
        lab.take_threads(2)
        assert lab.settings.threads == 2 and torch.get_num_threads() == 2
        assert (lab.numerics_key(), eval_cache_key(lab, card, onnx_file, None)) == before
    finally:
        torch.set_num_threads(threads_before)
    # an explicit --threads is another computation: another key
    other = _lab(tmp_path, [])
    other.settings.threads = 2
    assert eval_cache_key(other, card, onnx_file, None) != before[1]


def test_the_export_checks_read_a_file_s_outputs_from_disk_and_a_changed_file_misses(tmp_path, monkeypatch):
    """A warm rerun of the export checks makes no ONNX Runtime session for files whose outputs on
    the same inputs it has cached (resnest50: ~2 s a check, 9 checks); another file, other inputs
    or a failing check's diagnosis make one."""
    import torch

    from harness.compare import CheckFailure
    from harness.export import checks as ec
    from harness.export.exporter import export_onnx
    from harness.testing import FakeLab, recorder

    sessions = count_calls(monkeypatch, ec, "_session")
    model = _tiny()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=32).path
    x = torch.randn(8, 3, 32, 32)

    def both_checks(lab, file=path, inputs=x):
        rec = recorder()
        ec.check_matches_reference(file, model, inputs, rec, label="m", lab=lab)
        ec.check_batch_consistency(file, inputs, rec, label="m", lab=lab)
        return rec.figures

    first = both_checks(FakeLab(tmp_path))
    assert len(sessions) == 2
    again = both_checks(FakeLab(tmp_path))  # the next session, same cache
    assert len(sessions) == 2, "a warm rerun ran the file again"
    assert again == first  # the same figures: errors, settings, precision
    both_checks(FakeLab(tmp_path), inputs=x + 0.5)
    assert len(sessions) == 4, "other inputs were served the first inputs' outputs"
    broken = tmp_path / "broken.onnx"
    with torch.no_grad():
        model[0].weight[0] *= 3  # the file under test no longer computes the reference
    export_onnx(model, broken, input_size=32)
    with torch.no_grad():
        model[0].weight[0] /= 3
    with pytest.raises(CheckFailure) as failed:
        ec.check_matches_reference(broken, model, x, recorder(), label="broken", lab=FakeLab(tmp_path))
    assert "broken" in str(failed.value) and len(sessions) == 5
    with pytest.raises(CheckFailure):  # cached now: the failure is judged again, with a session to diagnose
        ec.check_matches_reference(broken, model, x, recorder(), label="broken", lab=FakeLab(tmp_path))
    assert len(sessions) == 6


def test_a_runtime_planted_under_the_shipped_name_is_never_served_cached_outputs(tmp_path):
    """A self-test may register a faulty wrapper as "ort": its outputs are not the shipped
    runtime's, so nothing is cached for it or read for it."""
    from types import SimpleNamespace

    from harness import runtimes
    from harness.export import checks as ec
    from harness.testing import FakeLab

    lab, x, path = FakeLab(tmp_path), np.zeros((2, 3, 8, 8), np.float32), tmp_path / "m.onnx"
    path.write_bytes(b"any bytes: the key digests them")
    assert ec.runs_cache_key(lab, path, x, runtimes.spec("ort"), "logits") is not None
    runtimes.register(SimpleNamespace(name="ort"))  # type: ignore[arg-type]
    try:
        assert ec.runs_cache_key(lab, path, x, runtimes.spec("ort"), "logits") is None
    finally:
        runtimes.unregister("ort")


def test_a_file_s_digest_covers_its_external_data(tmp_path):
    """An ONNX file with external data keeps its bytes when re-exported with new weights of the
    same shapes: the cache keys (evaluation, export checks) digest the data files too. A
    self-contained file digests as its bytes alone (existing cache entries stay valid)."""
    import hashlib

    import onnx

    from harness.export.exporter import export_onnx
    from harness.quant.quantize import file_digest

    model = _tiny()
    plain = export_onnx(model, tmp_path / "plain.onnx", input_size=32).path
    assert file_digest(plain) == hashlib.sha256(plain.read_bytes()).hexdigest()[:24]

    split = tmp_path / "split" / "m.onnx"
    split.parent.mkdir()
    onnx.save_model(onnx.load(str(plain)), str(split), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    before, graph = file_digest(split), split.read_bytes()
    data = split.parent / "m.data"
    weights = np.frombuffer(data.read_bytes(), dtype=np.float32)
    data.write_bytes((weights * 2).tobytes())  # retrained: the same shapes and offsets, new values
    assert split.read_bytes() == graph
    assert file_digest(split) != before


def test_the_fp16_and_optimization_checks_read_their_runs_from_disk_and_a_changed_file_misses(tmp_path, monkeypatch):
    """The fp16 check's three runs (fp32 file, its fp16-rounded twin, fp16 file) and the two
    optimization levels the ORT optimizer check compares are cached by file content; a warm
    rerun runs none, a changed fp16 file runs that file alone, a bisection runs the file."""
    import onnx
    import torch
    from onnx import numpy_helper

    from harness.compare import CheckFailure
    from harness.export import checks as ec
    from harness.export import fp16
    from harness.export.exporter import export_onnx
    from harness.runtimes import ort as ortrt
    from harness.testing import FakeLab, recorder

    runs = count_calls(monkeypatch, fp16, "run")
    path = export_onnx(_tiny(), tmp_path / "m.onnx", input_size=32).path
    half = fp16.convert(path, tmp_path / "m.fp16.onnx")
    x = torch.randn(8, 3, 32, 32).numpy()

    def fp16_check(file=half):
        rec = recorder()
        fp16.check_fp16_onnx_within_tolerance(path, file, x, rec, label="m", lab=FakeLab(tmp_path))
        return rec.figures

    first = fp16_check()
    assert len(runs) == 3
    assert fp16_check() == first and len(runs) == 3, "a warm rerun ran a file again"
    bad = onnx.load(str(half))
    w = next(i for i in bad.graph.initializer if len(i.dims) == 4)
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 3, w.name))
    onnx.save(bad, str(tmp_path / "bad.fp16.onnx"))
    with pytest.raises(CheckFailure, match="a weight changed"):
        fp16_check(tmp_path / "bad.fp16.onnx")
    assert len(runs) == 4, "the changed fp16 file was served the good file's outputs, or the fp32 runs were redone"

    sessions = count_calls(monkeypatch, ortrt, "session")
    levels = [ec._cached_levels(FakeLab(tmp_path), path, x, ortrt.ort_runner(path, x)) for _ in range(2)]
    assert np.array_equal(levels[0]("all"), levels[1]("all")) and len(sessions) == 1
    levels[1]("none")
    levels[0]("none")
    assert len(sessions) == 2
    levels[1]("all", ("ConstantFolding",))  # a bisection's run: never cached
    assert len(sessions) == 3


def test_the_preprocessing_effect_on_predictions_reads_the_reference_s_logits_from_disk(tmp_path, monkeypatch):
    """prediction_effect runs the reference on three batches in every session (resnest50: ~9 s
    of a warm rerun): a lab-built reference's logits come from disk the next session; a
    reference edited in place, other inputs or a module the lab did not build miss."""
    import torch

    from harness import lab as lab_mod
    from harness.preprocess import checks as pc

    forwards = count_calls(monkeypatch, lab_mod, "torch_logits")
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    std = (0.229, 0.224, 0.225)

    def effect(session_lab, model=None, inputs=x):
        model = model or session_lab.reference(session_lab.cards[0])
        return pc.prediction_effect(model, inputs, inputs[:, ::-1].copy(), std, lab=session_lab)

    first = effect(_lab(tmp_path, []))
    assert len(forwards) == 3
    assert effect(_lab(tmp_path, [])) == first and len(forwards) == 3, "a warm rerun ran the reference again"
    effect(_lab(tmp_path, []), inputs=x * 0.5)
    assert len(forwards) == 6
    edited_lab = _lab(tmp_path, [])
    edited = edited_lab.reference(edited_lab.cards[0])
    with torch.no_grad():
        edited[0].weight.mul_(2)
    assert effect(edited_lab, edited) != first and len(forwards) == 9
    effect(_lab(tmp_path, []), model=_tiny())  # not the lab's reference: never cached
    effect(_lab(tmp_path, []), model=_tiny())
    assert len(forwards) == 15


def test_embedded_images_are_preprocessed_once_then_read_from_disk(tmp_path, monkeypatch):
    """A warm rerun reads the embedded images' tensors (decoding and resizing 200 images took
    ~5 s per model and split); another preprocessing, split or count is another entry."""
    import torch

    from harness import lab as lab_mod
    from harness.lab import Lab, Settings

    decodes = count_calls(monkeypatch, lab_mod.data_mod, "load_images")

    def lab(eval_images=3):
        return Lab(Settings(models=["repvgg_a0", "resnest50"], eval_images=eval_images, cache_dir=tmp_path))

    first = lab()
    x, kept = first.inputs(first.zoo["repvgg_a0"])
    assert len(decodes) == 1 and x.shape == (3, 3, 224, 224)
    again = lab()  # the next session
    x2, kept2 = again.inputs(again.zoo["repvgg_a0"])
    assert len(decodes) == 1, "a warm session decoded the embedded images again"
    assert torch.equal(x2, x) and [s.name for s in kept2] == [s.name for s in kept]
    assert repr(again.zoo["resnest50"].preprocess) != repr(again.zoo["repvgg_a0"].preprocess)
    assert not torch.equal(again.inputs(again.zoo["resnest50"])[0], x) and len(decodes) == 2  # ECenterCrop
    assert lab().inputs(first.zoo["repvgg_a0"], "calib")[0].shape == (200, 3, 224, 224) and len(decodes) == 3
    assert lab(eval_images=2).inputs(first.zoo["repvgg_a0"])[0].shape == (2, 3, 224, 224) and len(decodes) == 4


def test_an_imagenet_folder_s_images_are_decoded_each_session(tmp_path):
    """A user's file rewritten under the same name is read again: a folder's tensors are not
    cached on disk (only its names would key them)."""
    from PIL import Image
    from test_data import make_imagenet

    from harness.lab import Lab, Settings

    folder = make_imagenet(tmp_path / "in", n=6)

    def first_image():
        lab = Lab(Settings(models=["repvgg_a0"], imagenet=folder, calib_images=2, cache_dir=tmp_path / "cache"))
        return lab.inputs(lab.zoo["repvgg_a0"])[0][0]

    before = first_image()
    [path] = [p for p in (folder / "val").iterdir() if p.name.endswith("00000003.JPEG")]
    Image.new("RGB", (60, 50), (250, 10, 10)).save(path, "JPEG")
    assert not np.allclose(first_image(), before)
    assert not (tmp_path / "cache" / "inputs").exists()


# --- the seeded references: BatchNorm tensors and the state's digest ---------------------------

@pytest.fixture
def few_calibration_images(monkeypatch):
    """References recalibrated on 16 embedded images, not 200: the same code path in a second
    (the tests below build three)."""
    from harness import lab

    monkeypatch.setattr(lab, "DEFAULT_CALIB_IMAGES", 16)


def _reference_lab(tmp_path):
    from harness.lab import Lab, Settings

    return Lab(Settings(models=["repvgg_a0"], cache_dir=tmp_path / "cache"))


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch_equal(sa[k], sb[k]) for k in sa)


def torch_equal(x, y) -> bool:
    import torch

    return x.dtype == y.dtype and torch.equal(x, y)


def test_a_reference_is_kept_as_its_batchnorm_tensors_and_loads_without_recalibrating(tmp_path, monkeypatch,
                                                                                       few_calibration_images):
    """The entry holds the BatchNorm tensors (a few % of the state: a full tier's references went
    from ~5 GB to a few MB) and the whole state's digest; the next session re-creates the seeded
    architecture, puts them in and gets the same model, with no recalibration."""
    from harness import models as models_mod

    first_lab = _reference_lab(tmp_path)
    card = first_lab.cards[0]
    first = first_lab.reference(card)
    folder = next((tmp_path / "cache" / "reference").glob("*/batchnorm.safetensors")).parent
    state_bytes = sum(v.numel() * v.element_size() for v in first.state_dict().values())
    stored = (folder / "batchnorm.safetensors").stat().st_size
    assert stored < 0.05 * state_bytes, f"{stored} bytes stored for a state of {state_bytes}"
    assert not list(folder.glob("state*"))

    def no_recalibration(*a, **k):
        raise AssertionError("recalibrated again: the cached BatchNorm tensors were not used")

    monkeypatch.setattr(models_mod, "recalibrate_bn", no_recalibration)
    again = _reference_lab(tmp_path).reference(card)
    assert _same_state(first, again)


def test_a_reference_whose_seeded_init_differs_here_is_rebuilt_with_a_note(tmp_path, monkeypatch, few_calibration_images):
    """An entry made where the seeded init came out otherwise (another host's kernels; planted here
    by nudging one conv weight of the re-created architecture) does not give the model it was built
    from: its digest says so, and the entry is rebuilt on this host instead of used."""
    import torch

    from harness import models as models_mod

    card = _reference_lab(tmp_path).cards[0]
    _reference_lab(tmp_path).reference(card)
    real = models_mod.create_architecture

    def other_host(c):
        model = real(c)
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if p.dim() == 4).view(-1)[0] += 1e-3
        return model

    monkeypatch.setattr(models_mod, "create_architecture", other_host)
    calls = count_calls(monkeypatch, models_mod, "recalibrate_bn")
    lab = _reference_lab(tmp_path)
    model = lab.reference(card)
    assert calls == [1], "the entry was used although its digest differs"
    assert len(lab.cache.notes) == 1 and "state digest" in lab.cache.notes[0] and "seeded init" in lab.cache.notes[0]
    nudged = other_host(card)  # the model is this host's init, recalibrated here
    conv = [n for n, p in nudged.named_parameters() if p.dim() == 4][0]
    assert torch.equal(dict(model.named_parameters())[conv], dict(nudged.named_parameters())[conv])
    assert models_mod.load_batchnorm_tensors(real(card), *_entry_files(tmp_path)) is not None
    assert models_mod.load_batchnorm_tensors(other_host(card), *_entry_files(tmp_path)) is None


def _entry_files(tmp_path):
    folder = next((tmp_path / "cache" / "reference").glob("*/batchnorm.safetensors")).parent
    return folder / "batchnorm.safetensors", folder / "reference.json"
