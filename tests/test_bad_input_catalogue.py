"""The catalogue of bad inputs (issue 21): small files made at test time, one row each, fed to
the loader the harness reads that kind of file with. A bad row must end as an InputError /
ConfigError whose message holds the row's key phrase and names the file; an ok row must load.
Rows that share a run (images, history) also show that the run went on: the good image is
still decoded, the run's own history line is still appended and its report written.

The end-to-end rows (a run with an input error goes on, writes every report and exits 6;
options and folders that cannot work are usage errors) are in tests/test_bad_inputs.py."""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from harness import data, manifest, models, onnxfile
from harness.errors import ZooconformError
from harness.preprocess import deploy as deploy_preprocess
from harness.report import history as hist
from harness.report.nightly import write_report

# --- makers: each writes one file (or folder) under the given folder and returns its path ---


def tiny_onnx(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 4, 4]) for n in ("input", "logits")]
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g", io_[:1], io_[1:])
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def escaping_onnx(folder: Path) -> Path:
    from test_bad_inputs import escaping_onnx as make

    return make(folder / "deploy" / "m.onnx")


def write(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path
    return make


def directory(name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).mkdir()
        return folder / name
    return make


def torch_file(obj_factory) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        import torch

        path = folder / "w.pth"
        torch.save(obj_factory(), path)
        return path
    return make


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def safetensors_file(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path = folder / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    return path


PRE_OK = {"pipeline": "resize_then_crop", "resize": 256, "crop": 224, "interpolation": "bilinear", "color": "RGB",
          "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def jpeg_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_bytes(side=60000) -> bytes:
    raw = bytearray(jpeg_bytes((8, 8)))
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(raw)


def torch_tensor_dict():
    import torch

    return {"w": torch.zeros(2)}


# (kind, row, maker, key phrase or None for a file that must load)
ROWS = [
    ("onnx", "ok", tiny_onnx, None),
    ("onnx", "empty file", write("m.onnx", b""), "is an empty file (0 bytes)"),
    ("onnx", "directory", directory("m.onnx"), "is a directory, not an ONNX file"),
    ("onnx", "missing", lambda f: f / "nope.onnx", "ONNX file not found"),
    ("onnx", "garbage", write("m.onnx", b"\x08\x07 not protobuf \xff\xff\xff"), "not a valid ONNX file"),
    ("onnx", "external data escaping its folder", escaping_onnx, "escapes"),
    ("checkpoint", "ok .pth", torch_file(torch_tensor_dict), None),
    ("checkpoint", "ok .safetensors", safetensors_file, None),
    ("checkpoint", "pickle payload", torch_file(lambda: {"x": _Payload()}), "GLOBAL"),
    ("checkpoint", "not tensors", torch_file(lambda: {"a": 1}), "not a mapping of parameter names to tensors"),
    ("checkpoint", "garbage", write("w.pth", b"PK\x03\x04 garbage"), "refused to load"),
    ("checkpoint", "garbage safetensors", write("w.safetensors", b"{not safetensors"), "not a valid safetensors file"),
    ("checkpoint", "empty file", write("w.pth", b""), "is an empty file (0 bytes)"),
    ("checkpoint", "directory", directory("w.pth"), "is a directory, not a checkpoint file"),
    ("preprocess", "ok", write("pre.json", json.dumps(PRE_OK)), None),
    ("preprocess", "crop 1000000", write("pre.json", json.dumps({**PRE_OK, "crop": 1000000})),
     "[crop] 1000000 px is larger than the 4096 px"),
    ("preprocess", "crop 0", write("pre.json", json.dumps({**PRE_OK, "crop": 0})), "[crop] expected an integer >= 1"),
    ("preprocess", "not JSON", write("pre.json", "{'crop': 224,}"), "not valid JSON"),
    ("preprocess", "not UTF-8", write("pre.json", b"{\"note\": \"\xff\"}"), "cannot be read as UTF-8"),
    ("preprocess", "a JSON list", write("pre.json", "[1, 2]"), "expected a JSON object"),
    ("preprocess", "unknown key", write("pre.json", json.dumps({**PRE_OK, "size": 3})), "unknown key(s) ['size']"),
    ("preprocess", "missing", lambda f: f / "nope.json", "deploy preprocessing config not found"),
    ("manifest", "ok", write("m.toml", '[models.repvgg_a0]\nonnx = "m.onnx"\n'), None),
    ("manifest", "bad TOML", write("m.toml", "[models.repvgg_a0\n"), "not valid TOML"),
    ("manifest", "unknown model", write("m.toml", '[models.resnet50]\nonnx = "m.onnx"\n'), "unknown model id 'resnet50'"),
    ("manifest", "unknown key", write("m.toml", '[models.repvgg_a0]\nonxx = "m.onnx"\n'), "unknown key(s) ['onxx']"),
    ("manifest", "not a string", write("m.toml", '[models.repvgg_a0]\nonnx = 3\n'), "expected a path string"),
    ("manifest", "empty path", write("m.toml", '[models.repvgg_a0]\nonnx = ""\n'), "expected a path"),
    ("manifest", "not UTF-8", write("m.toml", b"[models.repvgg_a0]\nonnx = \"\xff\"\n"), "not UTF-8 text"),
    ("manifest", "directory", directory("m.toml"), "is a directory, not a manifest file"),
    ("labels", "ok", write("val_label.txt", "a.JPEG 1\nb.JPEG 2\n"), None),
    ("labels", "UTF-8 BOM", write("val_label.txt", b"\xef\xbb\xbfa.JPEG 1\nb.JPEG 2\n"), None),
    ("labels", "same line twice", write("val_label.txt", "a.JPEG 1\nb.JPEG 2\na.JPEG 1\n"), None),
    ("labels", "conflicting duplicate", write("val_label.txt", "a.JPEG 1\nb.JPEG 2\na.JPEG 5\n"),
     "line 3: a.JPEG is labelled 5, but line 1 labels it 1"),
    ("labels", "class out of range", write("val_label.txt", "a.JPEG 1000\n"), "class index 1000 outside 0..999"),
    ("labels", "malformed line", write("val_label.txt", "a.JPEG one\n"), "expected '<file name> <class index>'"),
    ("labels", "empty file", write("val_label.txt", ""), "label file is empty"),
    ("labels", "directory", directory("val_label.txt"), "is a directory, not a label file"),
    ("image", "ok", write("x.JPEG", jpeg_bytes()), None),
    ("image", "decompression bomb", write("x.JPEG", bomb_bytes()), "decompression bomb"),
    ("image", "100 Mpixel header", write("x.JPEG", bomb_bytes(10000)), "decompression bomb"),
    ("image", "garbage", write("x.JPEG", b"\xff\xd8 not really a jpeg"), "cannot be decoded"),
    ("image", "truncated", write("x.JPEG", jpeg_bytes()[:200]), "cannot be decoded"),
    ("image", "empty file", write("x.JPEG", b""), "cannot be decoded"),
    ("image", "directory", directory("x.JPEG"), "is a directory, not an image"),
    ("image", "missing", lambda f: f / "gone.JPEG", "image file is missing"),
    ("history", "ok", write("history.jsonl", json.dumps({"model": "repvgg_a0", "run_id": "r0"}) + "\n"), None),
    ("history", "mistyped started_utc", write("history.jsonl", '{"model":"repvgg_a0","run_id":"x","started_utc":1}\n'),
     "line 1: started_utc is int, expected a string"),
    ("history", "torn line", write("history.jsonl", '{"model":"repvgg_a0","run_'), "line 1: not valid JSON"),
    ("history", "foreign line", write("history.jsonl", '{"hello":"world"}\n'), "line 1: no 'model'"),
    ("history", "foreign schema", write("history.jsonl", '{"schema":"x/1","model":"m","run_id":"r"}\n'),
     "line 1: schema 'x/1' is not"),
]


def load(kind: str, path: Path, folder: Path) -> str:
    """Read ``path`` the way the harness does; returns what the run went on with (or raises)."""
    if kind == "onnx":
        onnxfile.load_checked(path)
        return "loaded"
    if kind == "checkpoint":
        return f"{len(models.load_state_dict_file(path))} tensors"
    if kind == "preprocess":
        return deploy_preprocess.load(path).describe()
    if kind == "manifest":
        return str(sorted(manifest.load(path, ["repvgg_a0", "hrnet_w18_small_v1"]).models))
    if kind == "labels":
        return str(data.read_label_file(path))
    if kind == "image":  # beside a good image: the good one is still decoded
        good = folder / "good.JPEG"
        good.write_bytes(jpeg_bytes())
        samples = [data.Sample(p.name, p.name, (lambda p=p: data._open_rgb(p))) for p in (path, good)]
        decoded, kept, problems = data.load_images(samples)
        assert [s.name for s in kept][-1] == "good.JPEG", "the run went on: the other image is decoded"
        if problems:
            raise ZooconformError(problems[0])
        return "decoded"
    if kind == "history":  # the run's report is written and its own line appended
        doc = {"schema": "zooconform.results/1", "complete": True, "run_id": "now", "started_utc": "2026-11-22T01:00:00Z",
               "wall_s": 1.0, "machine": {}, "versions": {}, "settings": {"tier": "smoke"}, "counts": {"passed": 1},
               "tests": [{"nodeid": "suites/test_card.py::test_params[repvgg_a0]", "outcome": "passed",
                          "figures": {}, "model": "repvgg_a0", "suite": "test_card"}]}
        w = write_report(doc, folder / "run", path)
        assert w.index.exists() and w.appended == 1 and not w.history_error
        h = hist.read_history(path)
        assert h.records[-1]["run_id"] == "now"
        if h.bad_lines:
            raise ZooconformError(h.bad_note())
        return "read"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,row,maker,phrase", ROWS, ids=[f"{k}-{r}".replace(" ", "_") for k, r, _, _ in ROWS])
def test_catalogue(tmp_path, kind, row, maker, phrase):
    folder = tmp_path / "in"
    folder.mkdir()
    path = maker(folder)
    if phrase is None:
        load(kind, path, folder)
        return
    with pytest.raises(ZooconformError) as e:
        load(kind, path, folder)
    msg = str(e.value)
    assert phrase in msg, msg
    assert "Traceback" not in msg
    if kind != "history":  # a history note names the file by name (history.jsonl: ...)
        assert path.name in msg, msg


def test_catalogue_covers_every_kind_with_ok_and_bad_rows():
    kinds = {k for k, *_ in ROWS}
    assert all(any(p is None for k2, _, _, p in ROWS if k2 == k) for k in kinds)
    assert all(any(p is not None for k2, _, _, p in ROWS if k2 == k) for k in kinds)
    assert len(ROWS) >= 45
