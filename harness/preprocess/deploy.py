"""The deploy-side preprocessing config under test, and the suite's own implementation of it.

A runtime does not run torchvision; it runs a config. The manifest key ``preprocess`` names a
JSON file of this shape (all keys required unless noted)::

    {
      "pipeline": "resize_then_crop",      # or "crop_then_resize"
      "resize": 256,                       # short-side target; resize_then_crop only
      "crop_fraction": 0.875,              # share of the short side cropped; crop_then_resize only
      "crop": 224,                         # output side (pixels)
      "interpolation": "bilinear",         # "bilinear" | "bicubic" | "nearest" (PIL's, antialiased)
      "color": "RGB",                      # "RGB" | "BGR": channel order of the output
      "mean": [123.675, 116.28, 103.53],   # 0-255 pixel units, in the output's channel order
      "std": [58.395, 57.12, 57.375],      # the runtime computes (pixel - mean) / std
      "crop_offset_rounding": "half_even", # optional (default "half_even"): how the centred
                                           # crop's offset (margin / 2) is rounded: "half_even"
                                           # (Python's round: torchvision, ECenterCrop),
                                           # "half_up" or "floor" (C/C++ integer division)
      "note": "..."                        # optional, free text
    }

``resize_then_crop`` is torchvision's ``Resize(resize)`` + ``CenterCrop(crop)``;
``crop_then_resize`` is ResNeSt's ``ECenterCrop(crop)`` with ``crop_fraction`` in place of
``S/(S+32)``. Validation is strict: an unknown, missing or mistyped key is a
:class:`~harness.errors.ConfigError` naming the file, the key and the expected type; a key
that does not belong to the pipeline (``crop_fraction`` with ``resize_then_crop``) too.
Plausible but *wrong* values (mean in 0-1 units, BGR) are valid here: the parity check
(:mod:`harness.preprocess.checks`) catches them by their effect and names the key.

Decisions, shared with the reference (tested in ``tests/test_preprocess_*.py``):

- **Decoding.** Every input, whatever its mode, becomes 8-bit RGB through PIL's
  ``convert("RGB")`` (:func:`decode_rgb`), exactly as torchvision's ``ImageFolder`` loader
  and :func:`harness.transforms.reference_batch` do. Hence:
  - *alpha* (LA, RGBA, P with transparency) is **discarded, not composited**: a fully
    transparent pixel keeps its hidden colour. The output does not depend on alpha at all.
  - *L / LA / I;16* become grey RGB; PIL clips 16-bit values at 255 (measured: 256..65535
    -> 255), it does not rescale. *CMYK* uses PIL's naive conversion (no ICC profile).
  - the *EXIF orientation* tag is **ignored**, as torchvision's loader ignores it (the
    published accuracies were measured that way): the output is identical with or without
    the tag. A decoder that honours the tag feeds a rotated image; that is the decoder's
    business, and differs from the card on such images.
- **Images smaller than the crop** are not an error and are not padded by the card
  pipelines: ``Resize(256)`` scales the short side *up* to 256 before the crop, and
  ``ECenterCrop`` crops ``S/(S+32)`` of the short side and scales that *up* to S (a 1x1
  image gives a constant image). The crop box's right/bottom edge is rounded as PIL's
  ``crop`` rounds a float box; a crop is never narrower than 1 pixel.
  Only a config whose ``resize`` is smaller than ``crop`` leaves the crop larger than the
  image: it is padded with black (pixel 0) exactly as torchvision's ``CenterCrop`` pads
  (left/top padding ``(crop - size) // 2``).
- Sizes follow torchvision: the long side after ``Resize`` is ``int(resize * long / short)``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, model_validator

from ..config import Expect, OneOf, Strict, problem, validate
from ..errors import ConfigError
from ..zoo import ModelCard, Preprocess

PIPELINES = ("resize_then_crop", "crop_then_resize")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
COLORS = ("RGB", "BGR")
ROUNDINGS = ("half_even", "half_up", "floor")
GEOMETRY_KEY = {"resize_then_crop": "resize", "crop_then_resize": "crop_fraction"}
# the keys whose values define the output (``note`` does not), in the order messages list them
SEMANTIC_KEYS = ("pipeline", "resize", "crop_fraction", "crop", "interpolation", "color", "mean", "std",
                 "crop_offset_rounding")
SHAPE = "harness/preprocess/deploy.py"
# Largest crop / resize side accepted: 4096 px is 10x the largest card input (416 px) and
# 64 MiB of float32 per image; a typo like 1000000 would otherwise allocate terabytes.
MAX_SIDE = 4096


# --- validation: the file's model (harness/config.py) -------------------------------------

def _at_most_max_side(v: int, info: ValidationInfo) -> int:
    if v > MAX_SIDE:
        raise problem(f"{v} px is larger than the {MAX_SIDE} px this harness accepts "
                      f"({v}x{v}x3 float32 is {v * v * 12 / 2**30:.3g} GiB per image)",
                      fix=f"write \"{info.field_name}\" as the model's pixel count (224, 256, ...), at most {MAX_SIDE}")
    return v


def _finite(v: list[float]) -> list[float]:
    if not all(math.isfinite(x) for x in v):
        raise problem(f"expected finite numbers, got {v!r}", fix="write 3 finite numbers")
    return v


def _positive(v: list[float]) -> list[float]:
    if any(x <= 0 for x in v):
        raise problem(f"expected positive numbers, got {v!r}", fix="std divides: use values > 0")
    return v


_Side = Annotated[int, Field(ge=1), Expect("an integer >= 1 (pixels)", fix="write it as a pixel count >= 1"),
                  AfterValidator(_at_most_max_side), Field(json_schema_extra={"maximum": MAX_SIDE})]
_Triple = Annotated[list[float], Field(min_length=3, max_length=3),
                    Expect("a list of 3 numbers (0-255 pixel units)"), AfterValidator(_finite)]


def _geometry_schema(schema: dict[str, Any]) -> None:
    """Each pipeline requires its geometry key and refuses the other one."""
    schema["allOf"] = [{"if": {"properties": {"pipeline": {"const": p}}, "required": ["pipeline"]},
                        "then": {"required": [k], "not": {"anyOf": [{"required": [o]}
                                                                    for o in GEOMETRY_KEY.values() if o != k]}}}
                       for p, k in GEOMETRY_KEY.items()]


class File(Strict):
    """A deploy-side preprocessing config: what the runtime does to an image before the model."""

    model_config = ConfigDict(json_schema_extra=_geometry_schema)

    pipeline: Annotated[str, OneOf(PIPELINES)]
    crop: _Side = Field(description="output side (pixels)")
    interpolation: Annotated[str, OneOf(INTERPOLATIONS)]
    color: Annotated[str, OneOf(COLORS)]
    mean: _Triple = Field(description="per channel, 0-255 pixel units")
    std: Annotated[_Triple, AfterValidator(_positive)] = Field(description="per channel, 0-255 pixel units",
                                                               json_schema_extra={"items": {"type": "number",
                                                                                            "exclusiveMinimum": 0}})
    resize: _Side | None = Field(None, description="short side before the crop (pipeline resize_then_crop)")
    crop_fraction: Annotated[float, Field(gt=0, le=1), Expect(
        "a number in (0, 1]", fix="the share of the short side kept, e.g. 224/256 = 0.875")] | None = Field(
        None, description="share of the short side kept (pipeline crop_then_resize), e.g. 0.875")
    crop_offset_rounding: Annotated[str, OneOf(ROUNDINGS)] = "half_even"
    note: Annotated[str, Expect("a string")] = ""

    @model_validator(mode="after")
    def _geometry_of_the_pipeline(self) -> File:
        needed = GEOMETRY_KEY[self.pipeline]
        if getattr(self, needed) is None:
            raise problem(f"missing required key '{needed}' (pipeline '{self.pipeline}')", fix=f"add \"{needed}\": ...",
                          key=needed)
        for other in GEOMETRY_KEY.values():
            if other != needed and other in self.model_fields_set:
                raise problem(f"'{other}' does not apply to pipeline '{self.pipeline}'",
                              fix=f"remove \"{other}\", or set \"pipeline\" to the pipeline it belongs to", key=other)
        return self


KEYS = tuple(File.model_fields)
REQUIRED = tuple(k for k, f in File.model_fields.items() if f.is_required())
OPTIONAL = tuple(k for k in KEYS if k not in REQUIRED)

_PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class DeployConfig:
    pipeline: str
    crop: int
    interpolation: str
    color: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None
    crop_fraction: float | None = None
    crop_offset_rounding: str = "half_even"
    note: str = ""
    source: str = "<in memory>"  # the file it came from, or how it was derived (for messages)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: only the keys that apply to the pipeline (``note`` when set)."""
        d: dict[str, Any] = {"pipeline": self.pipeline}
        d[GEOMETRY_KEY[self.pipeline]] = self.resize if self.pipeline == "resize_then_crop" else self.crop_fraction
        d.update(crop=self.crop, interpolation=self.interpolation, color=self.color,
                 mean=list(self.mean), std=list(self.std), crop_offset_rounding=self.crop_offset_rounding)
        if self.note:
            d["note"] = self.note
        return d

    def describe(self) -> str:
        geom = (f"Resize({self.resize})+CenterCrop({self.crop})" if self.pipeline == "resize_then_crop"
                else f"crop {self.crop_fraction:.6g} of short side + Resize(({self.crop},{self.crop}))")
        mean, std = ([float(f"{x:.6g}") for x in v] for v in (self.mean, self.std))
        return (f"{geom} {self.interpolation} {self.color} mean={mean} std={std}"
                f" offsets={self.crop_offset_rounding}")


def from_dict(d: Any, source: str | Path = "<in memory>") -> DeployConfig:
    """Validate a parsed config. Every problem is a ConfigError naming ``source`` and the key."""
    if not isinstance(d, dict):
        raise ConfigError(source, "-", f"expected a JSON object, got {type(d).__name__}",
                          fix="write the config as {\"pipeline\": ..., \"crop\": ..., ...}")
    f: File = validate(File, d, source, shape=SHAPE)
    return DeployConfig(pipeline=f.pipeline, crop=f.crop, interpolation=f.interpolation, color=f.color,
                        mean=(float(f.mean[0]), float(f.mean[1]), float(f.mean[2])),
                        std=(float(f.std[0]), float(f.std[1]), float(f.std[2])), resize=f.resize,
                        crop_fraction=None if f.crop_fraction is None else float(f.crop_fraction),
                        crop_offset_rounding=f.crop_offset_rounding, note=f.note, source=str(source))


def load(path: Path | str) -> DeployConfig:
    """Read and validate a deploy config JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "-", "deploy preprocessing config not found",
                          fix="fix the manifest's 'preprocess' path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, "-", f"cannot be read as UTF-8 text ({e})", fix="write the config as a UTF-8 JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(path, "-", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          fix="fix the JSON syntax there (no comments, no trailing commas)") from None
    return from_dict(data, path)


def dump(cfg: DeployConfig, path: Path | str) -> Path:
    """Write the config as JSON, one key per line."""
    path = Path(path)
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in cfg.to_dict().items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path


# --- configs derived from references ----------------------------------------------------

def config_from_preprocess(pre: Preprocess, source: str) -> DeployConfig:
    """The deploy config that reproduces a reference pipeline (0-255 mean/std, RGB)."""
    geometry: dict[str, Any]
    if pre.pipeline == "resize_then_crop":
        geometry = {"pipeline": "resize_then_crop", "resize": pre.resize}
    elif pre.pipeline == "ecenter_crop":
        # the same expression ECenterCrop evaluates, so the float is identical
        geometry = {"pipeline": "crop_then_resize", "crop_fraction": float(pre.crop) / (pre.crop + 32)}
    else:
        raise ValueError(f"unknown reference pipeline {pre.pipeline!r}")
    return from_dict({**geometry, "crop": pre.crop, "interpolation": pre.interpolation, "color": "RGB",
                      "mean": [m * 255 for m in pre.mean], "std": [s * 255 for s in pre.std]}, source)


def config_from_card(card: ModelCard) -> DeployConfig:
    """The config that reproduces the card's reference preprocessing."""
    return config_from_preprocess(card.preprocess, f"config derived from {card.file.name} models.{card.id}")


def config_from_timm(data_config: dict, source: str) -> DeployConfig:
    """timm's eval transform (``create_transform(**resolve_data_config(...))``) as a config.

    timm's ``center`` mode is ``Resize(floor(size / crop_pct))`` + ``CenterCrop(size)``
    (timm/data/transforms_factory.py ``transforms_imagenet_eval``).
    """
    size = data_config["input_size"]
    h, w = size[-2], size[-1]
    mode = data_config.get("crop_mode") or "center"
    if h != w or mode != "center" or data_config["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"timm config not expressible as a deploy config: input_size={size}, crop_mode={mode}, "
                         f"interpolation={data_config['interpolation']}")
    crop_pct = data_config.get("crop_pct") or 0.875
    return from_dict({"pipeline": "resize_then_crop", "resize": math.floor(w / crop_pct), "crop": w,
                      "interpolation": data_config["interpolation"], "color": "RGB",
                      "mean": [m * 255 for m in data_config["mean"]], "std": [s * 255 for s in data_config["std"]]},
                     source)


def with_keys(cfg: DeployConfig, donor: DeployConfig, keys: Iterable[str]) -> DeployConfig:
    """``cfg`` with ``keys`` taken from ``donor`` (a key the donor lacks is removed).

    Raises ConfigError when the result is not a valid config (e.g. a pipeline without its size key).
    """
    d, donor_d = cfg.to_dict(), donor.to_dict()
    for k in keys:
        if k in donor_d:
            d[k] = donor_d[k]
        else:
            d.pop(k, None)
    return from_dict(d, f"{cfg.source} with {'+'.join(keys)} from {donor.source}")


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative (57.12 written in a file is 255 * 0.224 = 57.120000000000005)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def differing_keys(cfg: DeployConfig, other: DeployConfig) -> list[str]:
    a, b = cfg.to_dict(), other.to_dict()
    return [k for k in SEMANTIC_KEYS if not _same(a.get(k), b.get(k))]


# --- the implementation -----------------------------------------------------------------

def decode_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, as torchvision's loader: alpha dropped, EXIF orientation ignored."""
    return img if img.mode == "RGB" else img.convert("RGB")


def round_offset(x: float, rounding: str) -> int:
    if rounding == "half_even":
        return int(round(x))
    if rounding == "half_up":
        return int(math.floor(x + 0.5))
    if rounding == "floor":
        return int(math.floor(x))
    raise ValueError(f"unknown rounding {rounding!r}")


def crop_padded(arr: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """``arr[top:top+height, left:left+width]`` with zeros where the box leaves the image
    (what PIL's ``crop`` and torchvision's zero padding give)."""
    h, w = arr.shape[:2]
    out = np.zeros((height, width) + arr.shape[2:], dtype=arr.dtype)
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = arr[y0:y1, x0:x1]
    return out


def short_side_size(width: int, height: int, short_target: int) -> tuple[int, int]:
    """(new_width, new_height) for a short-side resize, torchvision's rounding (int())."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_target, int(short_target * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_offset(size: int, crop: int, rounding: str) -> int:
    if crop > size:  # torchvision pads (crop - size) // 2 on the left/top, then crops at 0
        return -((crop - size) // 2)
    return round_offset((size - crop) / 2.0, rounding)


def geometry(cfg: DeployConfig, img: Image.Image) -> np.ndarray:
    """The config's geometric part: (crop, crop, 3) uint8, channel order RGB."""
    rgb = decode_rgb(img)
    resample = _PIL_RESAMPLE[cfg.interpolation]
    w, h = rgb.size
    if cfg.pipeline == "resize_then_crop":
        assert cfg.resize is not None  # the config's validation requires it for resize_then_crop
        nw, nh = short_side_size(w, h, cfg.resize)
        resized = rgb if (nw, nh) == (w, h) else rgb.resize((nw, nh), resample)
        arr = np.asarray(resized)
        c = cfg.crop
        return crop_padded(arr, _center_offset(nw, c, cfg.crop_offset_rounding),
                           _center_offset(nh, c, cfg.crop_offset_rounding), c, c)
    # crop_then_resize: ECenterCrop's arithmetic, PIL's rounding of the float box edges
    assert cfg.crop_fraction is not None  # the config's validation requires it for crop_then_resize
    side = cfg.crop_fraction * min(w, h)
    top = round_offset((h - side) / 2.0, cfg.crop_offset_rounding)
    left = round_offset((w - side) / 2.0, cfg.crop_offset_rounding)
    width = max(1, int(round(left + side)) - left)
    height = max(1, int(round(top + side)) - top)
    region = crop_padded(np.asarray(rgb), left, top, width, height)
    if (width, height) != (cfg.crop, cfg.crop):
        region = np.asarray(Image.fromarray(region).resize((cfg.crop, cfg.crop), resample))
    return region


def normalise(pixels: np.ndarray, cfg: DeployConfig) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32: channel order, then (pixel - mean) / std."""
    x: np.ndarray = pixels.astype(np.float32)
    if cfg.color == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess(cfg: DeployConfig, img: Image.Image) -> np.ndarray:
    """One image through the config: (3, crop, crop) float32."""
    return normalise(geometry(cfg, img), cfg)


def preprocess_batch(cfg: DeployConfig, images: Sequence[Image.Image]) -> np.ndarray:
    if not images:
        return np.zeros((0, 3, cfg.crop, cfg.crop), np.float32)
    return np.stack([preprocess(cfg, im) for im in images])


__all__ = ["DeployConfig", "from_dict", "load", "dump", "config_from_card", "config_from_preprocess",
           "config_from_timm", "with_keys", "differing_keys", "decode_rgb", "geometry", "normalise",
           "preprocess", "preprocess_batch", "crop_padded", "short_side_size", "round_offset",
           "KEYS", "SEMANTIC_KEYS"]
