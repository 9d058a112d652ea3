"""The bridge: prepare -> an external runtime (ONNX Runtime, through files only) -> eval.

The "external runtime" below knows nothing of the harness: it reads datalist.txt, loads each
input's ``input_0``, runs the ONNX file and writes one output per line, as vamp does.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_accuracy_checks import KNOWN, Rec, tiny_card, write_folder

from harness import bridge
from harness.cli import main as cli
from harness.compare import CheckFailure
from harness.export.exporter import exported
from harness.lab import Lab, Settings

MODEL = "repvgg_a0"


def external_runtime(datalist: Path, onnx_path: Path, results: Path, fmt: str = "npz", numbered: bool = False) -> None:
    """Run every listed input through ONNX Runtime and write <stem>.npz (output_0) or <stem>.bin."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results.mkdir(parents=True, exist_ok=True)
    for i, line in enumerate(datalist.read_text().splitlines()):
        with np.load(line) as z:
            x = z["input_0"]
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        stem = f"output_{i:06d}" if numbered else Path(line).stem
        if fmt == "npz":
            np.savez(results / f"{stem}.npz", output_0=y)
        else:
            y.astype("<f4").tofile(results / f"{stem}.{fmt}")


@pytest.fixture(scope="module")
def onnx_path():
    lab = Lab(Settings(models=[MODEL]))
    return exported(lab, lab.cards[0]).path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("bridge") / "prepared"
    assert cli(["prepare", "--model", MODEL, "--out", str(out), "--images", "8"]) == 0
    return out


@pytest.fixture(scope="module")
def good_results(prepared, onnx_path, tmp_path_factory):
    results = tmp_path_factory.mktemp("bridge") / "results"
    external_runtime(prepared / "datalist.txt", onnx_path, results)
    return results


def run_eval(prepared, results, report, *more):
    rc = cli(["eval", "--model", MODEL, "--results", str(results), "--prepared", str(prepared),
              "--report-dir", str(report), *more])
    doc = json.loads((report / "results.json").read_text())
    return rc, {t["nodeid"].split("::")[1]: t for t in doc["tests"]}, doc


def copy_results(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_prepare_writes_the_documented_layout(prepared):
    meta = json.loads((prepared / "prepare.json").read_text())
    lines = (prepared / "datalist.txt").read_text().splitlines()
    assert meta["model"] == MODEL and meta["images"] == 8 == len(lines) and not meta["labelled"]
    assert meta["input"]["key"] == "input_0" and meta["input"]["shape"] == [1, 3, 224, 224]
    assert meta["noise_floor"]["images_measured"] == 8 and 0 < meta["noise_floor"]["max_rel"] < 1e-5
    with np.load(lines[0]) as z:
        assert z["input_0"].dtype == np.float32 and z["input_0"].shape == (1, 3, 224, 224)
    with np.load(prepared / "reference.npz") as z:
        assert z["logits"].shape == (8, 1000) and list(z["names"]) == [Path(p).stem for p in lines]
        assert list(z["labels"]) == [-1] * 8
        assert np.all(np.isfinite(z["floor"])) and np.all(z["floor"] < 1e-5 * np.abs(z["logits"]).max())
    assert not (prepared / "val_label.txt").exists()
    assert all("#" not in Path(p).name for p in lines)


def test_round_trip_through_onnx_runtime_passes(prepared, good_results, tmp_path):
    rc, tests, doc = run_eval(prepared, good_results, tmp_path / "report")
    assert rc == 0, tests
    assert doc["schema"] == "zooconform.results/1" and doc["counts"] == {"passed": 2}
    agree = tests["agreement_with_reference"]
    assert agree["outcome"] == "passed" and agree["suite"] == "bridge" and agree["model"] == MODEL
    figs = agree["figures"]
    assert figs["worst_rel_error"] <= figs["worst_allowed"] and figs["images_off"] == 0
    assert figs["top1_agreement"] == 1.0 and figs["floor_images_measured"] == 8
    assert tests["read_outputs"]["figures"]["matched"] == "by stem"


@pytest.mark.parametrize("fmt", ["bin", "raw"])
def test_raw_float32_outputs_pass(prepared, onnx_path, tmp_path, fmt):
    external_runtime(prepared / "datalist.txt", onnx_path, tmp_path / "out", fmt=fmt)
    assert run_eval(prepared, tmp_path / "out", tmp_path / "report")[0] == 0


def test_numbered_outputs_in_datalist_order_pass_and_say_so(prepared, onnx_path, tmp_path):
    external_runtime(prepared / "datalist.txt", onnx_path, tmp_path / "out", numbered=True)
    rc, tests, _ = run_eval(prepared, tmp_path / "out", tmp_path / "report")
    assert rc == 0 and tests["read_outputs"]["figures"]["matched"].startswith("by the number")


def test_a_tampered_output_file_fails_naming_it(prepared, good_results, tmp_path):
    results = copy_results(good_results, tmp_path / "out")
    victim = sorted(results.glob("*.npz"))[5]
    with np.load(victim) as z:
        y = z["output_0"]
    y = y.copy()
    y[0, 10] += 1e-3 * np.abs(y).max()  # one logit off by 0.1% of the scale
    np.savez(victim, output_0=y)
    rc, tests, _ = run_eval(prepared, results, tmp_path / "report")
    assert rc == 1
    t = tests["agreement_with_reference"]
    assert t["outcome"] == "failed" and t["figures"]["worst_file"] == victim.name
    assert re.match(rf"max\|out - ref\| / max\|ref\| of {MODEL} runtime output {victim.name} = [0-9.e-]+, "
                    rf"but should be <= [0-9.e-]+ \(10 x this image's fp32 noise floor", t["message"]), t["message"]
    assert f"[{victim} vs " in t["message"] and "1 of 8 output file(s) depart" in t["message"]


def test_swapped_output_files_fail(prepared, good_results, tmp_path):
    results = copy_results(good_results, tmp_path / "out")
    a, b = sorted(results.glob("*.npz"))[:2]
    a.rename(tmp_path / "a"), b.rename(a), (tmp_path / "a").rename(b)
    rc, tests, _ = run_eval(prepared, results, tmp_path / "report")
    assert rc == 1 and "2 of 8 output file(s) depart" in tests["agreement_with_reference"]["message"]


def _expect_input_error(prepared, results, report, *fragments):
    rc, tests, _ = run_eval(prepared, results, report)
    assert rc == 2
    t = tests["read_outputs"]
    assert t["outcome"] == "error"
    for f in fragments:
        assert f in t["message"], t["message"]
    return t["message"]


def test_missing_output_is_named(prepared, good_results, tmp_path):
    results = copy_results(good_results, tmp_path / "out")
    gone = sorted(results.glob("*.npz"))[3]
    gone.unlink()
    _expect_input_error(prepared, results, tmp_path / "r", f"InputError: {gone}: output missing: 1 of 8",
                        "fix: run the runtime over")


def test_wrong_shape_output_is_named(prepared, good_results, tmp_path):
    results = copy_results(good_results, tmp_path / "out")
    victim = sorted(results.glob("*.npz"))[1]
    np.savez(victim, output_0=np.zeros((1, 999), np.float32))
    _expect_input_error(prepared, results, tmp_path / "r", f"{victim}: holds 999 values of shape (1, 999), expected 1000")


def test_raw_file_of_the_wrong_size_is_named_with_a_float16_hint(prepared, onnx_path, tmp_path):
    external_runtime(prepared / "datalist.txt", onnx_path, tmp_path / "out", fmt="bin")
    victim = sorted((tmp_path / "out").glob("*.bin"))[2]
    victim.write_bytes(np.zeros(1000, np.float16).tobytes())
    _expect_input_error(prepared, tmp_path / "out", tmp_path / "r", f"{victim}: 2000 bytes, expected 4000", "float16?")


def test_nan_output_is_named(prepared, good_results, tmp_path):
    results = copy_results(good_results, tmp_path / "out")
    victim = sorted(results.glob("*.npz"))[7]
    with np.load(victim) as z:
        y = z["output_0"].copy()
    y[0, :3] = np.nan
    np.savez(victim, output_0=y)
    _expect_input_error(prepared, results, tmp_path / "r", f"{victim}: holds 3 non-finite value(s) (NaN/Inf)")


def test_outputs_of_another_datalist_are_named(prepared, good_results, tmp_path):
    results = copy_results(good_results, tmp_path / "out")
    stranger = results / "ILSVRC2012_val_00000099.npz"
    shutil.copy(next(results.glob("*.npz")), stranger)
    _expect_input_error(prepared, results, tmp_path / "r", f"{stranger}: output for an image that is not in",
                        "the runtime ran another datalist")


def test_an_edited_datalist_is_named(prepared, good_results, tmp_path):
    copy = copy_results(prepared, tmp_path / "prepared")
    lines = (copy / "datalist.txt").read_text().splitlines()
    (copy / "datalist.txt").write_text("\n".join(lines[1:]) + "\n")  # first image dropped
    msg = _expect_input_error(copy, good_results, tmp_path / "r", f"{copy / 'datalist.txt'}: does not match "
                              "reference.npz: 7 lines for 8 prepared images; line 1 names")
    assert "re-run zooconform prepare" in msg


def test_prepared_for_another_model_is_named(prepared, good_results, tmp_path, capsys):
    rc = cli(["eval", "--model", "hrnet_w18_small_v1", "--results", str(good_results), "--prepared", str(prepared),
              "--report-dir", str(tmp_path / "r")])
    assert rc == 2 and f"{prepared / 'prepare.json'}: prepared for model 'repvgg_a0', not 'hrnet_w18_small_v1'" \
        in capsys.readouterr().out


def test_prepare_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert cli(["prepare", "--model", MODEL, "--out", str(tmp_path), "--images", "2"]) == 2
    assert "folder is not empty and was not written by zooconform prepare" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_prepare_on_an_imagenet_folder_writes_labels_and_eval_scores_them(tmp_path, onnx_path):
    folder = write_folder(tmp_path / "imagenet")
    out = tmp_path / "prepared"
    assert cli(["prepare", "--model", MODEL, "--out", str(out), "--imagenet", str(folder), "--floor-images", "2"]) == 0
    assert json.loads((out / "prepare.json").read_text())["noise_floor"]["images_measured"] == 2
    labels = (out / "val_label.txt").read_text().splitlines()
    assert len(labels) == len(KNOWN) and sorted(labels)[0] == f"ILSVRC2012_val_00000001.JPEG {KNOWN[0][0]}"
    external_runtime(out / "datalist.txt", onnx_path, out / "output")
    # --prepared defaults to the results folder's parent when it holds prepare.json
    rc = cli(["eval", "--model", MODEL, "--results", str(out / "output"), "--report-dir", str(tmp_path / "r")])
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    assert rc == 0 and tests["accuracy"]["outcome"] == "passed"
    figs = tests["accuracy"]["figures"]
    assert figs["top1_pct"] == figs["reference_top1_pct"]
    assert figs["judged"].startswith("recorded only: the reference has no real weights")


def _labelled(reference, meta):
    names = [f"img{i}" for i in range(len(KNOWN))]
    return bridge.Prepared(Path("p"), {"data": "imagenet", "imagenet": True, **meta}, names,
                           reference.astype(np.float32), np.array([label for label, _ in KNOWN]),
                           np.full(len(KNOWN), np.nan))


def _colour_logits(channel_k):
    return -np.abs(np.arange(1000)[None, :] - np.array(channel_k, dtype=np.float64)[:, None] - 0.25)


def test_accuracy_with_real_weights_is_held_to_the_card():
    ref = _colour_logits([k for _, k in KNOWN])  # the known answers: top-1 40%, top-5 70%
    p = _labelled(ref, {"weights": {"kind": "checkpoint"}})
    rec = Rec()
    assert bridge.check_accuracy(tiny_card(), p, ref.astype(np.float32), rec) == "card"
    assert rec["top1_pct"] == 40.0 and rec["top5_pct"] == 70.0 and rec["claimed_row"] == "Tiny"
    wrong = _colour_logits([30.875 - k for _, k in KNOWN])  # what a BGR-fed runtime sees
    with pytest.raises(CheckFailure, match=r"top-1 of tiny_colour \(external runtime, 10 images of imagenet\) = "
                                           r"0\.000%.*cause: the prepared reference reaches 40\.000%"):
        bridge.check_accuracy(tiny_card(), p, wrong.astype(np.float32), Rec())
