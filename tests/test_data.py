"""Image sources: the embedded set and an ImageNet-layout folder made here."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness import data
from harness.errors import InputError


def make_imagenet(root, n=12, classes=4, corrupt=(), missing=(), extra=()):
    val = root / "val"
    val.mkdir(parents=True)
    lines = []
    for i in range(1, n + 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        label = (i - 1) % classes
        lines.append(f"{name} {label}")
        if i in missing:
            continue
        if i in corrupt:
            (val / name).write_bytes(b"\xff\xd8 not really a jpeg")
        else:
            Image.new("RGB", (40 + i, 30), (10 * label, 50, 90)).save(val / name, "JPEG")
    for name in extra:
        Image.new("RGB", (32, 32)).save(val / name, "JPEG")
    (root / "val_label.txt").write_text("\n".join(lines) + "\n")
    return root


def test_embedded_is_deterministic_and_split_by_source():
    a = data.embedded("eval", 40)
    b = data.embedded("eval", 40)
    calib = data.embedded("calib", 40)
    assert [s.name for s in a.samples] == [s.name for s in b.samples]
    assert np.array_equal(np.asarray(a.samples[3].load()), np.asarray(b.samples[3].load()))
    assert not {s.group for s in a.samples} & {s.group for s in calib.samples}
    sizes = {s.load().size for s in a.samples}
    assert len(sizes) > 20, "images of many sizes and aspect ratios"


def test_imagenet_folder_reads_labels(tmp_path):
    images = data.imagenet(make_imagenet(tmp_path))
    assert len(images) == 12 and images.labelled
    assert images.samples[0].label == 0 and images.samples[5].label == 1
    assert images.samples[0].load().mode == "RGB"


def test_corrupt_and_missing_images_are_counted_not_fatal(tmp_path):
    images = data.imagenet(make_imagenet(tmp_path, corrupt=(3,), missing=(5,)))
    assert len(images.problems) == 1 and "00000005" in images.problems[0]
    decoded, kept, problems = data.load_images(images.samples)
    assert len(decoded) == 10 and len(problems) == 1
    assert "ILSVRC2012_val_00000003.JPEG" in problems[0] and "cannot be decoded" in problems[0]


def test_label_file_not_matching_the_folder_names_first_mismatches(tmp_path):
    root = make_imagenet(tmp_path, extra=("ILSVRC2012_val_00000099.JPEG",))
    with pytest.raises(InputError) as e:
        data.imagenet(root)
    assert "val_label.txt" in str(e.value) and "ILSVRC2012_val_00000099.JPEG" in str(e.value)


def test_label_file_of_the_wrong_length(tmp_path):
    root = make_imagenet(tmp_path, n=12)
    lines = (root / "val_label.txt").read_text().splitlines()
    (root / "val_label.txt").write_text("\n".join(lines[:4]) + "\n")  # 4 labels for 12 images
    with pytest.raises(InputError, match=r"8 image\(s\) in .* have no label .*label file has 4 lines for 12 images"):
        data.imagenet(root)


def test_malformed_label_line(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "val_label.txt").write_text("ILSVRC2012_val_00000001.JPEG\n")
    with pytest.raises(InputError, match=r"line 1: expected '<file name> <class index>'"):
        data.imagenet(root)


def test_class_names_must_have_1000_lines(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "label.txt").write_text("tench, Tinca tinca\ngoldfish, Carassius auratus\n")
    with pytest.raises(InputError, match="expected 1000 class names"):
        data.imagenet(root)


def test_calibration_subset_represents_every_class(tmp_path):
    images = data.imagenet(make_imagenet(tmp_path, n=40, classes=8))
    calib, rest = data.calibration_subset(images, count=10)
    assert {s.label for s in calib.samples} == set(range(8))
    assert len(calib) == 10 and len(rest) == 30
    assert not {s.name for s in calib.samples} & {s.name for s in rest.samples}
    again, _ = data.calibration_subset(images, count=10)
    assert [s.name for s in again.samples] == [s.name for s in calib.samples]


def test_every_kind_of_source_is_on_both_sides_of_the_split():
    """A calibration set must cover what evaluation shows (issue 6: with every graphic source on
    the evaluation side, int8 ranges calibrated on photos clipped text and silhouettes)."""
    kinds = data._SOURCE_KINDS
    assert {"colour photo", "grey photo", "graphic", "texture"} <= set(kinds)
    for kind, (calib, evaluation) in kinds.items():
        assert calib and evaluation, f"{kind}: sources on one side only"
    assert not set(data._CALIB_PHOTOS) & set(data._EVAL_PHOTOS)
    groups = {s.group for s in data.embedded("calib", 200).samples}
    assert {p for p in data._CALIB_PHOTOS} <= groups  # every calibration source is used at the default size
