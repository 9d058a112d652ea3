"""Bad inputs and faults (issue 21): each ends as a named error or a clean outcome, the rest of
the run goes on, and no report or history line is lost. One test (or one row) per case of the
issue, each made here from small files written at test time."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _kit import DIES, suite_dir
from PIL import Image

from harness import data, errors, onnxfile
from harness.commands import run as run_cmd
from harness.errors import ConfigError, InputError
from harness.lab import Lab, Settings
from harness.preprocess import deploy as deploy_preprocess
from harness.report import history as hist
from harness.report.nightly import write_report

ROOT = Path(__file__).resolve().parent.parent


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def zooconform(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def pytest_run(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def report_doc(run_id="run2", started="2026-11-22T01:00:00Z", model="repvgg_a0") -> dict:
    return {"schema": "zooconform.results/1", "complete": True, "exitstatus": 0, "run_id": run_id,
            "started_utc": started, "wall_s": 1.0, "machine": {"cpu": "x", "cores": 2}, "versions": {},
            "settings": {"tier": "smoke"}, "counts": {"passed": 1}, "notes": [],
            "tests": [{"nodeid": f"suites/test_card.py::test_params[{model}]", "outcome": "passed",
                       "duration_s": 0.1, "figures": {}, "model": model, "suite": "test_card"}]}


# --- 1. history.jsonl: corrupt, mistyped and foreign lines ---------------------------------

BAD_HISTORY_LINES = {
    "mistyped started_utc": '{"model":"repvgg_a0","run_id":"x","started_utc":1}',
    "mistyped run_id": '{"model":"repvgg_a0","run_id":["a"],"started_utc":"2026-11-20T01:00:00Z"}',
    "mistyped metrics": '{"model":"repvgg_a0","run_id":"y","metrics":{"fp32.b1":{"value":"fast"}}}',
    "mistyped machine": '{"model":"repvgg_a0","run_id":"z","machine":"a laptop"}',
    "foreign schema": '{"schema":"someone.else/2","model":"repvgg_a0","run_id":"w"}',
    "foreign object": '{"hello":"world"}',
    "a JSON list": '[1, 2, 3]',
    "torn line": '{"model":"repvgg_a0","run_',
    "not UTF-8": '\udcff\udcfe',
    "deeply nested": "[" * 100000 + "]" * 100000,
}


@pytest.mark.parametrize("case", sorted(BAD_HISTORY_LINES))
def test_a_bad_history_line_never_stops_a_run_or_costs_a_line(tmp_path, case):
    path = tmp_path / "history.jsonl"
    good = {"schema": hist.SCHEMA, "model": "repvgg_a0", "run_id": "run1", "started_utc": "2026-11-21T01:00:00Z"}
    bad = BAD_HISTORY_LINES[case].encode("utf-8", "surrogateescape")
    path.write_bytes(json.dumps(good).encode() + b"\n" + bad + b"\n")
    h = hist.read_history(path)
    assert [r["run_id"] for r in h.records] == ["run1"] and h.bad_lines == [2]
    assert h.bad_reasons[2] and "line 2:" in h.bad_note()
    w = write_report(report_doc(), tmp_path / "run2", path)  # the issue's repro: a TypeError here
    assert w.appended == 1 and not w.history_error
    assert [r["run_id"] for r in hist.read_history(path).records] == ["run1", "run2"]
    assert "compared with run run1" in w.index.read_text()
    doc = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert any("history.jsonl: 1 line(s) skipped (line 2:" in n for n in doc["notes"])
    assert "line(s) skipped" in w.summary.read_text()


def test_the_issue_repro_line_is_named_with_its_reason(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"model":"repvgg_a0","run_id":"x","started_utc":1}\n')
    h = hist.read_history(path)
    assert h.records == [] and h.bad_reasons == {1: "started_utc is int, expected a string"}
    assert hist.previous_record(h, "repvgg_a0", "now", "2026-11-22T01:00:00Z") is None


def test_an_unreadable_history_still_gives_the_report_and_says_why(tmp_path):
    folder_not_file = tmp_path / "history.jsonl"
    folder_not_file.mkdir()
    w = write_report(report_doc(), tmp_path / "run", folder_not_file)
    assert w.index.exists() and (tmp_path / "run" / "results.json").exists()
    assert "history.jsonl: cannot be read" in w.history_error and "--no-history" in w.history_error


def test_a_history_that_cannot_be_appended_keeps_the_report_and_names_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "history.jsonl"

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("harness.report.nightly.append_records", refuse)
    w = write_report(report_doc(), tmp_path / "run", path)
    assert w.index.exists() and w.appended == 0
    assert "could not be appended (Permission denied)" in w.history_error
    assert "zooconform report" in w.history_error and "--append-history" in w.history_error


# --- 2. a decompression bomb among the images ---------------------------------------------

def bomb_jpeg(path: Path, side: int = 60000) -> Path:
    """A tiny JPEG whose header claims side x side pixels (the issue's 633-byte file)."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, "JPEG")
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 7] = side.to_bytes(2, "big")
    raw[sof + 7:sof + 9] = side.to_bytes(2, "big")
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("side", [60000, 10000])  # 3.6 G pixels: PIL's error; 100 M: PIL's warning
def test_a_decompression_bomb_is_an_input_error_and_the_others_are_scored(tmp_path, side):
    val = tmp_path / "val"
    val.mkdir()
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    for name in names[:2]:
        Image.new("RGB", (40, 30), (10, 50, 90)).save(val / name, "JPEG")
    bomb = bomb_jpeg(val / names[2], side)
    assert bomb.stat().st_size < 1000
    (tmp_path / "val_label.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    images = data.imagenet(tmp_path)
    decoded, kept, problems = data.load_images(images.samples)
    assert len(decoded) == 2 and [s.name for s in kept] == names[:2]
    [problem] = problems
    assert names[2] in problem and "decompression bomb" in problem


def test_a_directory_in_place_of_an_image_is_named(tmp_path):
    (tmp_path / "x.JPEG").mkdir()
    with pytest.raises(InputError, match="is a directory, not an image"):
        data._open_rgb(tmp_path / "x.JPEG")


# --- 3. one guarded loader for every ONNX --------------------------------------------------

def escaping_onnx(path: Path) -> Path:
    """An ONNX whose weight lives in external data outside its folder (../secret.bin)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 4, 4]) for n in ("input", "logits")]
    graph = helper.make_graph([helper.make_node("Mul", ["input", "w"], ["logits"])], "g", io[:1], io[1:], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    (path.parent.parent / "secret.bin").write_bytes(np.ones(3, np.float32).tobytes())
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].name == "w"
    return path


def test_quant_pre_process_never_reads_an_escaping_file(tmp_path, monkeypatch):
    from harness.quant import quantize

    model = escaping_onnx(tmp_path / "deploy" / "m.onnx")
    called = []
    monkeypatch.setattr("onnxruntime.quantization.shape_inference.quant_pre_process",
                        lambda *a, **k: called.append(a))
    with pytest.raises(InputError, match=r"external data location '\.\./secret\.bin' of tensor 'w' escapes"):
        quantize.preprocess_for_quantization(model, tmp_path / "out.onnx")
    assert called == []


def test_every_onnx_load_in_the_harness_goes_through_the_guard():
    """No module but onnxfile.py calls onnx.load itself (grep): one guarded loader."""
    offenders = []
    for py in (ROOT / "harness").rglob("*.py"):
        if py.relative_to(ROOT).as_posix() == "harness/onnxfile.py":
            continue
        for n, line in enumerate(py.read_text().splitlines(), 1):
            if "onnx.load(" in line or "onnx.load_model(" in line:
                offenders.append(f"{py.relative_to(ROOT)}:{n}")
    assert offenders == []


def test_a_model_saved_over_the_size_limit_keeps_its_weights_beside_it_and_passes_the_guard(tmp_path, monkeypatch):
    """onnxfile.save_model (fp16 runs, divergence probes, the layer report's comparison graph):
    over the limit the weights go to '<file>.data' in the same folder, which the guard accepts."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.full((1, 3, 16, 16), 2.0, np.float32)  # over onnx's 1 KB threshold for external tensors
    w = numpy_helper.from_array(weights, "w")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 16, 16]) for n in ("input", "logits")]
    model = helper.make_model(helper.make_graph([helper.make_node("Mul", ["input", "w"], ["logits"])], "g",
                                                io[:1], io[1:], [w]), opset_imports=[helper.make_opsetid("", 17)])
    monkeypatch.setattr(onnxfile, "EXTERNAL_DATA_ABOVE_BYTES", 0)
    path = onnxfile.save_model(model, tmp_path / "probe.onnx")
    assert onnxfile.external_data_files(path) == [(tmp_path / "probe.onnx.data").resolve()]
    weight = onnxfile.load_checked(path).graph.initializer[0]
    assert np.array_equal(numpy_helper.to_array(weight), weights)
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == weights.shape  # the caller's proto kept its weights
    monkeypatch.undo()
    small = onnxfile.save_model(model, tmp_path / "small.onnx")
    assert onnxfile.external_data_files(small) == [] and onnx.load(str(small)).graph.initializer[0].raw_data


@pytest.mark.parametrize("case", ["directory", "empty", "missing"])
def test_onnx_paths_that_are_not_files_say_what_they_are(tmp_path, case):
    path = tmp_path / "m.onnx"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    phrase = {"directory": "is a directory", "empty": "empty file (0 bytes)", "missing": "not found"}[case]
    for load in (onnxfile.load_checked, onnxfile.load_checked_header, onnxfile.check_external_data):
        with pytest.raises(InputError, match=re_escape(phrase)):
            load(path)



# --- 5 + 6. publishing the latest reports ---------------------------------------------------

def run_folder(tmp_path: Path, tag: str, files=run_cmd.LATEST) -> Path:
    folder = tmp_path / "smoke" / tag
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text(f"{tag} {name} " + "x" * 20000)
    return folder


def phase(folder: Path) -> run_cmd.Phase:
    return run_cmd.Phase("all", folder, None, [])


def test_latest_reports_are_published_together_and_readable(tmp_path):
    folder = run_folder(tmp_path, "run1")
    out, why = run_cmd.publish_latest(folder, tmp_path, [(phase(folder), 0)])
    assert why == "" and sorted(p.name for p in out) == sorted(run_cmd.LATEST)
    for name in run_cmd.LATEST:
        assert (tmp_path / name).read_text().startswith(f"run1 {name}")
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("case", ["usage error", "killed before junit"])
def test_a_run_that_did_not_start_or_was_killed_publishes_nothing(tmp_path, case):
    first = run_folder(tmp_path, "run1")
    run_cmd.publish_latest(first, tmp_path, [(phase(first), 0)])
    if case == "usage error":
        second = run_folder(tmp_path, "run2", files=("results.json",))
        out, why = run_cmd.publish_latest(second, tmp_path, [(phase(second), run_cmd.USAGE)])
        assert "did not start" in why
    else:
        second = run_folder(tmp_path, "run2", files=("results.json",))  # the snapshot of a SIGKILLed pytest
        out, why = run_cmd.publish_latest(second, tmp_path, [(phase(second), -9)])
        assert "junit.xml, report.html" in why
    assert out == []
    for name in run_cmd.LATEST:  # the previous run's three files, all of them
        assert (tmp_path / name).read_text().startswith(f"run1 {name}")


def test_concurrent_publishes_never_fail_nor_mix_two_runs(tmp_path):
    folders = [run_folder(tmp_path, f"run{i}") for i in range(4)]
    errors: list[BaseException] = []

    def publish(folder):
        try:
            for _ in range(15):
                out, why = run_cmd.publish_latest(folder, tmp_path, [(phase(folder), 0)])
                assert why == "" and len(out) == 3
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    tags = {(tmp_path / name).read_text().split()[0] for name in run_cmd.LATEST}
    assert len(tags) == 1  # the three latest files come from one run
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_results_files_are_written_0644(tmp_path):
    from harness.report.results import atomic_write_text

    atomic_write_text(tmp_path / "results.json", "{}")
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644


# --- 7. unwritable report dir, history, cache ----------------------------------------------

def test_run_with_a_report_dir_that_is_a_file_is_a_usage_error(tmp_path):
    not_a_dir = tmp_path / "reports"
    not_a_dir.write_text("a file")
    r = zooconform("run", "--report-dir", not_a_dir, "--models", "repvgg_a0")
    assert r.returncode == run_cmd.USAGE, r.stderr[-2000:]
    assert f"--report-dir {not_a_dir}" in r.stderr and "fix: pass --report-dir" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_run_with_a_history_that_is_a_directory_is_a_usage_error_before_running(tmp_path):
    history = tmp_path / "h.jsonl"
    history.mkdir()
    r = zooconform("run", "--report-dir", tmp_path / "reports", "--history", history, "--models", "repvgg_a0")
    assert r.returncode == run_cmd.USAGE and f"history {history}: cannot be appended to (is a directory)" in r.stderr
    assert "phase" not in r.stdout  # nothing ran
    assert not any((tmp_path / "reports" / "smoke").iterdir())


@pytest.mark.parametrize("option", ["--report-dir", "--cache-dir"])
def test_an_unusable_report_or_cache_folder_is_named_before_the_run(tmp_path, option):
    not_a_dir = tmp_path / "blocker"
    not_a_dir.write_text("a file")
    key = option.removeprefix("--").replace("-", "_")
    settings = Settings(models=["repvgg_a0"], cache_dir=tmp_path / "cache", report_dir=tmp_path / "reports")
    setattr(settings, key, not_a_dir / "sub" if option == "--cache-dir" else not_a_dir)
    with pytest.raises(errors.OptionError, match=re_escape(option)) as e:
        Lab(settings, check_folders=True)
    assert "fix: pass " + option in str(e.value)


def test_plain_pytest_with_an_unusable_report_dir_is_a_usage_error_not_an_internal_error(tmp_path):
    not_a_dir = tmp_path / "reports"
    not_a_dir.write_text("a file")
    r = pytest_run("suites/test_card.py", "--collect-only", "-q", f"--report-dir={not_a_dir}",
                   f"--cache-dir={tmp_path / 'cache'}", "--models", "repvgg_a0")
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert "INTERNALERROR" not in r.stdout + r.stderr and "--report-dir" in r.stderr and "is not a directory" in r.stderr


# --- 8. bad numbers ------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,option", [
    ("threads", -1, "--threads"), ("threads", 0, "--threads"), ("threads", 10 ** 6, "--threads"),
    ("eval_images", 0, "--eval-images"), ("eval_images", -5, "--eval-images"),
    ("calib_images", 0, "--calib-images"), ("calib_images", -5, "--calib-images"),
])
def test_bad_counts_are_option_errors_naming_the_option(tmp_path, key, value, option):
    with pytest.raises(errors.OptionError, match=rf"^{re_escape(option)} {value}: expected a whole number >= 1"):
        Lab(Settings(models=["repvgg_a0"], cache_dir=tmp_path / "c", **{key: value}))


def test_threads_minus_one_is_a_usage_error_in_pytest_not_an_internal_error(tmp_path):
    r = pytest_run("suites/test_card.py", "--collect-only", "-q", "--threads", "-1", "--models", "repvgg_a0",
                   f"--report-dir={tmp_path}", f"--cache-dir={tmp_path / 'cache'}")
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--threads -1: expected a whole number >= 1" in r.stderr and "INTERNALERROR" not in r.stdout + r.stderr


@pytest.mark.parametrize("key", ["crop", "resize"])
def test_preprocess_sizes_are_bounded(key):
    cfg = {"pipeline": "resize_then_crop", "resize": 256, "crop": 224, "interpolation": "bilinear",
           "color": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    deploy_preprocess.from_dict(dict(cfg, **{key: deploy_preprocess.MAX_SIDE}))
    with pytest.raises(ConfigError, match=rf"\[{key}\] 1000000 px is larger than the 4096 px") as e:
        deploy_preprocess.from_dict(dict(cfg, **{key: 1000000}), "pre.json")
    assert e.value.key == key and "pre.json" in str(e.value)


# --- 9. --weights-dir that does not exist --------------------------------------------------

def test_a_weights_dir_that_does_not_exist_is_an_option_error(tmp_path):
    with pytest.raises(errors.OptionError, match=r"--weights-dir .*wieghts: does not exist"):
        Lab(Settings(models=["repvgg_a0"], cache_dir=tmp_path / "c", weights_dir=tmp_path / "wieghts"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.OptionError, match="is not a directory"):
        Lab(Settings(models=["repvgg_a0"], cache_dir=tmp_path / "c", weights_dir=tmp_path / "file"))


# --- 10. label files -----------------------------------------------------------------------

def labelled_folder(root: Path, n: int = 12, label_text: str | None = None, bom: bool = False) -> Path:
    val = root / "val"
    val.mkdir(parents=True)
    lines = []
    for i in range(1, n + 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        Image.new("RGB", (40, 30), (10 * (i % 4), 50, 90)).save(val / name, "JPEG")
        lines.append(f"{name} {i % 4}")
    text = label_text if label_text is not None else "\n".join(lines) + "\n"
    (root / "val_label.txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return root


def test_a_label_file_with_a_utf8_bom_is_read(tmp_path):
    images = data.imagenet(labelled_folder(tmp_path, bom=True))
    assert len(images) == 12 and images.samples[0].name == "ILSVRC2012_val_00000001.JPEG"


def test_a_conflicting_duplicate_label_names_both_lines(tmp_path):
    text = "ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 2\nILSVRC2012_val_00000001.JPEG 7\n"
    (tmp_path / "val_label.txt").write_text(text)
    with pytest.raises(InputError, match="line 3: ILSVRC2012_val_00000001.JPEG is labelled 7, but line 1 labels it 1"):
        data.read_label_file(tmp_path / "val_label.txt")


def test_an_identical_duplicate_line_counts_the_image_once(tmp_path):
    (tmp_path / "val_label.txt").write_text("a.JPEG 1\nb.JPEG 2\na.JPEG 1\n")
    assert data.read_label_file(tmp_path / "val_label.txt") == [("a.JPEG", 1), ("b.JPEG", 2)]


def test_a_label_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "val_label.txt").mkdir()
    with pytest.raises(InputError, match="is a directory, not a label file"):
        data.read_label_file(tmp_path / "val_label.txt")


def test_a_folder_too_small_for_the_calibration_split_says_so(tmp_path):
    lab = Lab(Settings(models=["repvgg_a0"], cache_dir=tmp_path / "c", imagenet=labelled_folder(tmp_path / "in")))
    assert len(lab.images("calib")) == 12 and len(lab.images("eval")) == 0  # accuracy reads both splits
    with pytest.raises(InputError) as e:
        lab.inputs(lab.cards[0], "eval")  # what the eval-split checks (int8, preprocessing effect) take
    msg = str(e.value)
    assert "12 labelled image(s)" in msg and "--calib-images 1000, the default" in msg
    assert "leaving 0 for evaluation" in msg and "--calib-images N with N < 12" in msg
    small = Lab(Settings(models=["repvgg_a0"], cache_dir=tmp_path / "c", calib_images=4,
                         imagenet=tmp_path / "in"))
    assert len(small.images("calib")) == 4 and len(small.images("eval")) == 8


# --- 11. messages and exit codes -----------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_the_weights_only_refusal_keeps_the_offending_global_and_whole_sentences(tmp_path):
    import torch

    from harness.models import load_state_dict_file

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(InputError) as e:
        load_state_dict_file(path)
    msg = str(e.value)
    assert "GLOBAL posix.system" in msg or "GLOBAL os.system" in msg, msg
    assert "weights_only` set to `False`" not in msg and "weights_only=False" not in msg.split("(fix:")[0]
    problem = msg.split("refused to load: ", 1)[1].split(" (fix:")[0]
    assert problem.endswith((".", ")")), problem


@pytest.mark.parametrize("case", ["directory", "empty"])
def test_checkpoint_paths_that_are_not_checkpoints_say_what_they_are(tmp_path, case):
    from harness.models import load_state_dict_file

    path = tmp_path / "w.pth"
    path.mkdir() if case == "directory" else path.write_bytes(b"")
    with pytest.raises(InputError, match="is a directory" if case == "directory" else r"empty file \(0 bytes\)"):
        load_state_dict_file(path)


def test_a_manifest_entry_naming_a_directory_says_so(tmp_path):
    from harness import manifest

    (tmp_path / "deploy").mkdir()
    (tmp_path / "m.toml").write_text('[models.repvgg_a0]\nonnx = "deploy"\n')
    m = manifest.load(tmp_path / "m.toml", ["repvgg_a0"])
    with pytest.raises(InputError, match=r"\[models.repvgg_a0\] onnx but is a directory"):
        m.for_model("repvgg_a0").get("onnx")


def doc_with(*outcomes_messages, complete=True) -> dict:
    return {"complete": complete, "tests": [{"nodeid": f"t{i}", "outcome": o, "message": m}
                                            for i, (o, m) in enumerate(outcomes_messages)]}


@pytest.mark.parametrize("codes,doc,interrupted,expected", [
    ([0], doc_with(("passed", "")), False, 0),
    ([1], doc_with(("failed", "error = 3, but should be <= 1")), False, 1),
    ([1], doc_with(("failed", "InputError: m.onnx: is an empty file"), ("passed", "")), False, 6),
    ([1], doc_with(("error", "ConfigError: m.toml: [models.x] unknown"), ("failed", "x")), False, 6),
    ([4], doc_with(), False, 4),
    ([1], doc_with(("failed", "x"), complete=False), True, 2),
    ([-9], doc_with(("passed", ""), complete=False), False, 2),
    ([0], doc_with(("passed", ""), complete=False), False, 2),
    ([3], doc_with(), False, 3),
    ([5], doc_with(), False, 5),
])
def test_exit_codes_separate_the_outcomes(codes, doc, interrupted, expected):
    assert run_cmd.exit_code(codes, doc, interrupted) == expected


INPUT_ERROR_SUITE = '''
from harness.errors import InputError

def test_fine(model_card, record):
    record(answer=42)

def test_reads_your_file(model_card, record):
    raise InputError("deploy/model.onnx", "is an empty file (0 bytes), not an ONNX model", fix="re-export it")
'''


def test_an_input_error_run_goes_on_writes_every_report_and_exits_6(tmp_path):
    suites = tmp_path / "mysuite"
    suites.mkdir()
    (suites / "test_mine.py").write_text(INPUT_ERROR_SUITE)
    reports = tmp_path / "reports"
    r = zooconform("run", "--suites", suites, "--models", "repvgg_a0", "--report-dir", reports)
    assert r.returncode == run_cmd.INPUT_ERROR, r.stdout[-3000:] + r.stderr[-3000:]
    assert "input errors: 1 test(s) could not judge your files" in r.stdout
    [folder] = [p for p in (reports / "smoke").iterdir() if p.is_dir()]
    doc = json.loads((folder / "results.json").read_text())
    outcomes = {t["nodeid"].split("::")[-1]: t["outcome"] for t in doc["tests"]}
    assert outcomes == {"test_fine[repvgg_a0]": "passed", "test_reads_your_file[repvgg_a0]": "failed"}
    for name in ("index.html", "summary.md", "junit.xml", "report.html"):
        assert (folder / name).exists(), name
    for name in run_cmd.LATEST:
        assert (reports / name).exists() and stat.S_IMODE((reports / name).stat().st_mode) == 0o644
    assert len(hist.read_history(reports / "history.jsonl").records) == 1


def odd_input_onnx(path: Path, case: str) -> Path:
    """An fp16-input file, or one with two inputs: ORT refuses the harness's float32 batch."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["N", 3, 4, 4]
    if case == "fp16":
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT16, shape)]
        nodes = [helper.make_node("Cast", ["input"], ["logits"], to=TensorProto.FLOAT)]
    else:
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("input", "mask")]
        nodes = [helper.make_node("Add", ["input", "mask"], ["logits"])]
    out = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", inputs, out),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("case,cause", [
    ("fp16", "cause: input 'input' is float16, not float32: the harness feeds float32 images"),
    ("two inputs", "cause: the file declares 2 graph inputs (input, mask); the harness feeds one float32 image batch"),
])
def test_a_file_ort_cannot_feed_is_blamed_on_its_inputs_not_a_fixed_shape(tmp_path, case, cause):
    import torch

    from harness.compare import CheckFailure
    from harness.export import checks as exportchecks

    path = odd_input_onnx(tmp_path / "m.onnx", case)
    with pytest.raises(CheckFailure) as e:
        exportchecks.check_batch_consistency(path, torch.zeros(8, 3, 4, 4), lambda **k: None, label="your ONNX")
    assert cause in str(e.value) and "Reshape to batch 1" not in str(e.value)
    if case == "fp16":
        with pytest.raises(CheckFailure, match=r"element type of input 'input' of your ONNX = float16, but should be float32"):
            exportchecks.check_declared_io(path, lambda **k: None, input_size=4, label="your ONNX")


# --- 12. a pytest killed outright ------------------------------------------------------------



def test_a_killed_pytest_still_leaves_a_junit_naming_the_kill_and_publishes_nothing(tmp_path):
    import xml.etree.ElementTree as ET

    suites = suite_dir(tmp_path, DIES)
    reports = tmp_path / "reports"
    r = zooconform("run", "--suites", suites, "--models", "repvgg_a0", "--report-dir", reports)
    assert r.returncode == run_cmd.INTERRUPTED, r.stdout[-3000:] + r.stderr[-3000:]
    [folder] = [p for p in (reports / "smoke").iterdir() if p.is_dir()]
    suite = ET.parse(folder / "junit.xml").getroot()
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert "killed by signal 9" in props["incomplete"]
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["test_fast[repvgg_a0]"].find("error") is None
    assert cases["run-all-incomplete"].find("error") is not None
    assert "latest:" in r.stdout and "not replaced" in r.stdout  # no report.html: the previous latest stay
    assert not (reports / "results.json").exists()
    assert len(hist.read_history(reports / "history.jsonl").records) == 1


# --- 4. an xdist worker killed early ---------------------------------------------------------

EARLY_DEATH_SUITE = '''
import os, signal
if os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
    os.kill(os.getpid(), signal.SIGKILL)  # a worker killed while collecting (OOM, a lost runner)

def test_fast(model_card, record):
    record(answer=42)
'''


def test_an_xdist_worker_killed_while_collecting_loses_no_results(tmp_path):
    """A worker killed before any test reported makes xdist stop the whole phase, the healthy
    worker's tests with it: the phase is re-run serially, every model's results are kept, and
    the crash is a note of the run (not 'no test ran', and not silently dropped)."""
    suites = suite_dir(tmp_path, EARLY_DEATH_SUITE)
    reports = tmp_path / "reports"
    r = zooconform("run", "--suites", suites, "--models", "repvgg_a0,hrnet_w18_small_v1", "-j", "2",
                   "--report-dir", reports)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "re-running phase parallel serially" in r.stdout
    [folder] = [p for p in (reports / "smoke").iterdir() if p.is_dir()]
    doc = json.loads((folder / "results.json").read_text())
    ran = {t["nodeid"].split("::")[-1]: t["outcome"] for t in doc["tests"]}
    assert ran == {"test_fast[repvgg_a0]": "passed", "test_fast[hrnet_w18_small_v1]": "passed"}, ran
    assert doc["complete"] is True
    assert any("an xdist worker died before any test reported ([gw0] node down" in n for n in doc["notes"]), doc["notes"]
    assert "re-run serially" in (folder / "index.html").read_text()
    assert (folder / "phase1-parallel-serial" / "junit.xml").exists() and (folder / "junit.xml").exists()
    assert (reports / "results.json").exists()  # the run's results are the latest


def test_a_weights_dir_without_a_selected_models_file_says_so(tmp_path):
    """A --weights-dir that holds some models' weights: the others are named, not silently seeded."""
    wd = tmp_path / "weights"
    wd.mkdir()
    (wd / "repvgg_a0.safetensors").write_bytes(b"")
    lab = Lab(Settings(models=["repvgg_a0", "hrnet_w18_small_v1"], cache_dir=tmp_path / "c", weights_dir=wd))
    gaps = [p for p in lab.data_problems if p.startswith("--weights-dir")]
    assert len(gaps) == 1 and "has no hrnet_w18_small_v1.safetensors/.pth/.pt" in gaps[0]
    assert "seeded random-init default" in gaps[0]


@pytest.mark.parametrize("content, says", [(b"\xff\xfe[profile]\n", "not UTF-8 text"), (None, "is a directory")])
def test_a_budget_profile_that_is_not_text_is_a_config_error(tmp_path, content, says):
    from harness.latency import budgets

    p = tmp_path / "mine.toml"
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        budgets.load_profile(p)
    assert says in str(e.value) and str(p) in str(e.value)


def test_plain_pytest_tells_an_input_error_from_a_failing_check(pytester, monkeypatch):
    """Without `zooconform run` too: a test that ends on an InputError gives exit code 6 (not 1)
    and a JUnit <failure> of type zooconform.input_error, so a CI tells "your manifest is wrong"
    from "your model is wrong"; a failing check alone still exits 1."""
    import xml.etree.ElementTree as ET

    from harness import host
    from harness.latency import checks as lc

    # the fingerprint's peaks (seconds of GEMMs, measured because JUnit is written) are not under test
    monkeypatch.setattr(lc, "host_figures", lambda threads, measure_peaks=True, lab=None: host.fingerprint(threads))
    pytester.makepyfile(test_inputs='''
        from pathlib import Path
        from harness.compare import CheckFailure
        from harness.errors import InputError

        def test_bad_file(model_card):
            raise InputError(Path("mine.onnx"), "not an ONNX file", fix="re-export it")

        def test_failing_check(model_card):
            raise CheckFailure("top-1 of x = 1, but should be >= 2")
    ''')
    both = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", "--no-results",
                              f"--junitxml={pytester.path / 'j.xml'}")
    assert both.ret == 6, both.stdout.str()[-2000:]
    types = {c.get("name"): (c.find("failure").get("type") if c.find("failure") is not None else None)
             for c in ET.parse(pytester.path / "j.xml").getroot().iter("testcase")}
    assert types["test_bad_file[repvgg_a0]"] == "zooconform.input_error", types
    assert types["test_failing_check[repvgg_a0]"] != "zooconform.input_error", types
    only_check = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", "--no-results",
                                    "-k", "failing_check")
    assert only_check.ret == 1
