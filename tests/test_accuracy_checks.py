"""Accuracy against the cards, on a tiny ImageNet-layout folder with known answers.

The folder holds solid-colour JPEGs; the model's logits are a known function of the red
level (class k = (R - 4) / 8, ranked k, k+1, k-1, k+2, k-2, k+3, ...), so each image's
top-1/top-5 outcome is chosen by the test. The whole path runs: ImageNet folder reader,
the card's preprocessing, streaming batches, torch and ONNX Runtime, the card check.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import accuracy, compare, runtimes
from harness.compare import CheckFailure
from harness.errors import InputError
from harness.export.exporter import export_onnx
from harness.lab import Lab, Settings
from harness.testing import Recorder
from harness.zoo import ModelCard, Preprocess, PublishedRow, load_zoo

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 32


def tiny_card(rows=((("official",), "Tiny", 40.0, 70.0, None),)) -> ModelCard:
    published = tuple(PublishedRow(sources=src, name=name, seed="t", params_m=None, flops_g=None,
                                   flops_convention=None, top1=t1, top5=t5, weights=w)
                      for src, name, t1, t5, w in rows)
    return ModelCard(id="tiny_colour", family="test", timm_arch="-", input_size=CROP,
                     preprocess=Preprocess("resize_then_crop", crop=CROP, interpolation="bilinear",
                                           mean=MEAN, std=STD, resize=36),
                     published=published, tiers=("full",), file=Path("fixtures/zoo/tiny.toml"))


class ColourModel(torch.nn.Module):
    """logits[c] = -|c - k - 0.25|, k = (level - 4) / 8 of one channel's mean (R unless told)."""

    def __init__(self, channel: int = 0):
        super().__init__()
        self.channel = channel
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.register_buffer("classes", torch.arange(1000, dtype=torch.float32).view(1, 1000))

    def forward(self, x):
        level = ((x * self.std + self.mean) * 255.0).mean(dim=(2, 3))[:, self.channel:self.channel + 1]
        k = (level - 4.0) / 8.0
        return -torch.abs(self.classes - k - 0.25)


# (label, k): the model's class k relative to the label decides the outcome
HIT = [(5, 5), (9, 9), (22, 22), (27, 27)]
TOP5_ONLY = [(7, 6), (11, 12), (24, 22)]  # label k+1 (2nd), k-1 (3rd), k+2 (4th)
MISS = [(8, 5), (4, 7), (28, 18)]         # label k+3 (6th), k-3 (7th), far
KNOWN = HIT + TOP5_ONLY + MISS            # top-1 4/10, top-5 7/10


def write_folder(root: Path, specs=KNOWN, label_lines=None, extra_files=()) -> Path:
    """ImageNet layout: val/*.JPEG, val_label.txt, label.txt. Blue = 251 - red (a BGR swap moves k far)."""
    val = root / "val"
    val.mkdir(parents=True)
    lines = []
    for i, (label, k) in enumerate(specs, 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        red = 8 * k + 4
        Image.new("RGB", (48 + 4 * i, 40), (red, 90 + i, 251 - red)).save(val / name, quality=95)
        lines.append(f"{name} {label}")
    for name, data in extra_files:
        (val / name).write_bytes(data)
    (root / "val_label.txt").write_text("\n".join(label_lines if label_lines is not None else lines) + "\n")
    (root / "label.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
    return root


def lab_on(folder: Path, tmp_path: Path, **kw) -> Lab:
    return Lab(Settings(imagenet=folder, models=["repvgg_a0"], cache_dir=tmp_path / "cache", **kw))


Rec = Recorder  # the record fixture's stand-in (harness/testing.py)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "imagenet")


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    good = export_onnx(ColourModel(0), d / "colour.onnx", input_size=CROP).path
    bgr = export_onnx(ColourModel(2), d / "colour_bgr.onnx", input_size=CROP).path
    return good, bgr


def test_topk_matches_known_answers_per_image(folder, tmp_path):
    lab = lab_on(folder, tmp_path)
    ev = accuracy.evaluate_on(lab, tiny_card(), {"torch": accuracy.torch_runner(ColourModel())}, batch_size=3)
    assert ev.n == 10 and ev.skipped == []
    assert ev.accuracy("torch", 1) == pytest.approx(0.4) and ev.accuracy("torch", 5) == pytest.approx(0.7)
    want_top1 = [i < len(HIT) for i in range(10)]
    want_top5 = [i < len(HIT) + len(TOP5_ONLY) for i in range(10)]
    order = np.argsort(ev.names)  # the lab streams calibration then evaluation split: compare by name
    assert list(ev.hits("torch", 1)[order]) == want_top1
    assert list(ev.hits("torch", 5)[order]) == want_top5


def test_onnx_runtime_gives_the_same_answers_and_passes_the_card(folder, tmp_path, onnx_files):
    lab = lab_on(folder, tmp_path)
    card = tiny_card()
    sess = runtimes.get("ort").prepare(onnx_files[0], 1)
    ev = accuracy.evaluate_on(lab, card, {"torch": accuracy.torch_runner(ColourModel()),
                                          "onnx": accuracy.onnx_runner(sess)})
    assert ev.accuracy("onnx", 1) == pytest.approx(0.4) and ev.accuracy("onnx", 5) == pytest.approx(0.7)
    rec = Rec()
    row = accuracy.check_against_card(card, ev, "onnx", rec)
    assert row.name == "Tiny"
    assert rec["images"] == 10 and rec["top1_pct"] == 40.0 and rec["top5_pct"] == 70.0
    assert rec["top1_widening_pt"] > 20  # 10 of 50,000 images: the binomial interval dominates
    accuracy.check_runtime_matches_reference(card, ev, "onnx", "torch", rec)
    assert rec["top1_agreement"] == 1.0


def test_metric_equals_the_seed_definition_on_random_logits_with_ties():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, size=(300, 1000)).astype(np.float32)  # many ties
    labels = rng.integers(0, 1000, size=300)
    labels[:100] = np.argmax(logits[:100], axis=1)  # some sure hits (argmax: first of ties)
    ev = accuracy.Evaluation.from_logits("x", [str(i) for i in range(300)], list(labels), {"m": logits})
    for k in (1, 5):
        assert ev.accuracy("m", k) == compare.topk_accuracy(logits, labels, k)
    assert ev.accuracy("m", 1) >= 1 / 3


def test_bgr_swapped_onnx_fails_card_and_agreement_naming_the_cause(folder, tmp_path, onnx_files):
    lab = lab_on(folder, tmp_path)
    card = tiny_card()
    ev = accuracy.evaluate_on(lab, card, {"torch": accuracy.torch_runner(ColourModel()),
                                          "onnx": accuracy.onnx_runner(runtimes.get("ort").prepare(onnx_files[1], 1))})
    rec = Rec()
    row, how = accuracy.claimed_row(card, 100 * ev.accuracy("torch", 1))
    with pytest.raises(CheckFailure) as e:
        accuracy.check_against_card(card, ev, "onnx", rec, row=row, how=how)
    msg = str(e.value)
    assert msg.startswith("top-1 of tiny_colour (ONNX under test, 10 images of")
    assert "but should be 40.0% +-" in msg and "tiny.toml models.tiny_colour 'Tiny' (official, seed t)" in msg
    assert "widened by" in msg and "subset of 10 of 50000 images" in msg
    assert "cause: the torch reference reaches 40.000% on the same images: the ONNX under test computes " \
           "something else" in msg and "top-5 fails too" in msg
    with pytest.raises(CheckFailure, match=r"top-1 agreement of tiny_colour ONNX under test with the torch "
                                           r"reference \(10 images\) = 0\.0000, but should be >= 0\.999"):
        accuracy.check_runtime_matches_reference(card, ev, "onnx", "torch", Rec())


def test_labels_in_another_class_order_are_named_as_the_cause(tmp_path):
    shifted = [((label + 500) % 1000, k) for label, k in KNOWN]  # a val_label.txt of another class order
    lab = lab_on(write_folder(tmp_path / "imagenet", shifted), tmp_path)
    ev = accuracy.evaluate_on(lab, tiny_card(), {"torch": accuracy.torch_runner(ColourModel())})
    with pytest.raises(CheckFailure, match=r"top-1 of tiny_colour \(torch reference.* = 0\.000%.*cause: at chance "
                                           r"level .*labels in another class order"):
        accuracy.check_against_card(tiny_card(), ev, "torch", Rec())


def test_a_corrupt_and_a_missing_image_are_counted_and_named_not_fatal(tmp_path):
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 11)]
    lines = [f"{n} {label}" for n, (label, _) in zip(names, KNOWN)]
    lines += ["ILSVRC2012_val_00000011.JPEG 3", "ILSVRC2012_val_00000012.JPEG 4"]  # 11 corrupt, 12 missing
    folder = write_folder(tmp_path / "imagenet", label_lines=lines,
                          extra_files=[("ILSVRC2012_val_00000011.JPEG", b"\xff\xd8\xff\xe0 not a jpeg")])
    lab = lab_on(folder, tmp_path)
    ev = accuracy.evaluate_on(lab, tiny_card(), {"torch": accuracy.torch_runner(ColourModel())})
    assert ev.n == 10 and ev.accuracy("torch", 1) == pytest.approx(0.4)
    assert len(ev.skipped) == 2
    assert any("ILSVRC2012_val_00000011.JPEG" in s and "cannot be decoded" in s for s in ev.skipped)
    assert any("ILSVRC2012_val_00000012.JPEG" in s and "missing" in s for s in ev.skipped)
    rec = Rec()
    accuracy.check_against_card(tiny_card(), ev, "torch", rec)
    assert rec["skipped_images"] == 2 and len(rec["skipped_first"]) == 2


def test_label_file_shorter_than_the_folder_fails_naming_the_first_mismatches(tmp_path):
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 11)]
    lines = [f"{n} {label}" for n, (label, _) in zip(names, KNOWN)][:8]  # 2 images without a label
    lab = lab_on(write_folder(tmp_path / "imagenet", label_lines=lines), tmp_path)
    with pytest.raises(InputError) as e:
        accuracy.evaluate_on(lab, tiny_card(), {"torch": accuracy.torch_runner(ColourModel())})
    msg = str(e.value)
    assert "val_label.txt" in msg and "2 image(s)" in msg
    assert "ILSVRC2012_val_00000009.JPEG" in msg and "ILSVRC2012_val_00000010.JPEG" in msg
    assert "label file has 8 lines for 10 images" in msg


def test_claimed_row_is_the_sources_row_or_else_the_closest():
    card = tiny_card(rows=[(("official",), "A", 72.3, 90.7, None), (("timm",), "a", 72.336, 90.68, None),
                           (("ppcls",), "a_ssld", 81.6, 95.8, "ssld")])
    row, how = accuracy.claimed_row(card, 72.31)
    assert row.name == "A" and how.startswith("no weights source given: closest")
    assert "ppcls 'a_ssld' 81.6" in how
    assert accuracy.claimed_row(card, 80.0)[0].name == "a_ssld"
    row, how = accuracy.claimed_row(card, 72.31, source="timm")
    assert row.name == "a" and how == "weights source 'timm'"
    with pytest.raises(InputError, match=r"no published top-1 for source 'mmcls'.*\['official', 'ppcls', 'timm'\]"):
        accuracy.claimed_row(card, 72.3, source="mmcls")


def test_subset_widening_is_binomial_and_vanishes_on_the_full_set():
    assert accuracy.subset_widening_pt(76.8, 50_000) == 0.0
    w1000 = accuracy.subset_widening_pt(76.8, 1000)
    assert 2.4 < w1000 < 2.7  # 1.96 * sqrt(.768 * .232 / 1000) = 2.6 pt, times the fpc 0.99
    assert accuracy.subset_widening_pt(76.8, 49_000) < 0.1 < accuracy.subset_widening_pt(76.8, 40_000)


def test_within_tolerance_on_the_full_set_passes_and_outside_fails():
    card = tiny_card(rows=[(("official",), "T", 40.0, None, None)])
    n = 50_000
    labels = [0] * n
    logits = np.zeros((n, 6), np.float32)
    logits[:, 1] = 0.5  # class 1 wins where class 0 is not raised
    logits[: int(0.402 * n), 0] = 1  # 40.2%: inside 0.3 pt
    ev = accuracy.Evaluation.from_logits("full", [str(i) for i in range(n)], labels, {"torch": logits})
    rec = Rec()
    accuracy.check_against_card(card, ev, "torch", rec)
    assert rec["top1_widening_pt"] == 0.0 and rec["top1_allowed_pt"] == 0.3
    logits[: int(0.404 * n), 0] = 1  # 40.4%: outside, and no widening to hide it
    ev = accuracy.Evaluation.from_logits("full", [str(i) for i in range(n)], labels, {"torch": logits})
    with pytest.raises(CheckFailure, match=r"= 40\.400%, but should be 40\.0% \+-0\.30 pt \(tolerance 0\.3 pt\)"):
        accuracy.check_against_card(card, ev, "torch", Rec())


def test_without_real_data_the_reason_says_what_to_provide(tmp_path, folder):
    card = load_zoo()["repvgg_a0"]
    no_data = Lab(Settings(models=["repvgg_a0"], cache_dir=tmp_path / "c"))
    reason = accuracy.requirements(no_data, card, "torch")
    assert "--imagenet DIR" in reason and "val_label.txt" in reason
    no_weights = lab_on(folder, tmp_path)
    reason = accuracy.requirements(no_weights, card, "torch")
    assert "--weights-dir DIR holding repvgg_a0.pth or repvgg_a0.safetensors" in reason and "--artifacts" in reason
    assert "onnx = " in accuracy.requirements(no_weights, card, "onnx")
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "repvgg_a0.safetensors").write_bytes(b"")
    assert accuracy.requirements(lab_on(folder, tmp_path, weights_dir=weights), card, "torch") is None


def test_suite_end_to_end_with_untrained_weights_fails_at_chance_level(tmp_path):
    """The suite file itself on a tiny folder, with the seeded default saved as a "checkpoint":
    weights that were never trained must fail the card at chance level, while the ONNX still
    predicts like the reference (the export is faithful, the weights are not the card's)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import save_file

    root = Path(__file__).resolve().parent.parent
    lab = Lab(Settings(models=["repvgg_a0"]))
    weights = tmp_path / "weights"
    weights.mkdir()
    save_file({k: v.contiguous() for k, v in lab.reference(lab.cards[0]).state_dict().items()},
              str(weights / "repvgg_a0.safetensors"))
    folder = write_folder(tmp_path / "imagenet")
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(root / "suites" / "test_accuracy.py"), "-q",
                           "-p", "no:cacheprovider", "--models", "repvgg_a0", f"--imagenet={folder}",
                           f"--weights-dir={weights}", f"--report-dir={report}"],
                          cwd=root, capture_output=True, text=True, timeout=600)
    doc = json.loads((report / "results.json").read_text())
    tests = {t["nodeid"].split("::")[1].split("[")[0]: t for t in doc["tests"]}
    assert tests["test_onnx_predicts_like_reference"]["outcome"] == "passed", proc.stdout[-3000:]
    for name in ("test_reference_accuracy_matches_card", "test_onnx_accuracy_matches_card"):
        t = tests[name]
        assert t["outcome"] == "failed", proc.stdout[-3000:]
        assert "repvgg.toml models.repvgg_a0 'RepVGG-A0' (official+mmcls, seed 004)" in t["message"]
        assert "cause: at chance level" in t["message"] and t["figures"]["images"] == 10


def test_an_onnx_file_with_a_fixed_batch_size_is_run_in_padded_chunks(folder, tmp_path):
    path = export_onnx(ColourModel(0), tmp_path / "b4.onnx", input_size=CROP, dynamic_batch=False,
                       example_batch=4).path
    sess = runtimes.get("ort").prepare(path, 1)
    assert sess.fixed_batch == 4
    ev = accuracy.evaluate_on(lab_on(folder, tmp_path), tiny_card(), {"onnx": accuracy.onnx_runner(sess)},
                              batch_size=3)
    assert ev.n == 10 and ev.accuracy("onnx", 1) == pytest.approx(0.4) and ev.accuracy("onnx", 5) == pytest.approx(0.7)
