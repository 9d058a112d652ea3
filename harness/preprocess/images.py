"""Test images of every PIL mode, size and EXIF orientation: what the preprocessing property
tests (suites/test_preprocess.py) and their self-tests feed to a pipeline."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

IMAGE_MODES = ("L", "LA", "RGB", "RGBA", "P", "CMYK", "I;16")


def synthetic_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A deterministic image of ``mode`` with smooth structure plus noise (not flat: a flat
    image hides geometry errors). Drawn at most 512 px a side, then scaled up bilinearly,
    so a 9-megapixel image costs a fraction of a second."""
    rng = np.random.default_rng(seed)
    sw, sh = min(width, 512), min(height, 512)
    xx = np.arange(sw, dtype=np.float32)[None, :]
    yy = np.arange(sh, dtype=np.float32)[:, None]
    fx, fy = (float(f) for f in rng.uniform(0.02, 0.4, size=2))

    def plane(depth: int = 256, dtype=np.uint8) -> np.ndarray:
        phase = float(rng.uniform(0, 6.3))
        smooth = 0.5 + 0.5 * np.sin(fx * xx + fy * yy + phase)
        unit = (smooth * 0.8 + 0.2 * rng.random((sh, sw), dtype=np.float32)).astype(np.float32)
        if (sw, sh) != (width, height):
            unit = np.asarray(Image.fromarray(unit, "F").resize((width, height), Image.Resampling.BILINEAR))
        return np.clip(unit * (depth - 1), 0, depth - 1).astype(dtype)

    if mode == "L":
        return Image.fromarray(plane(), "L")
    if mode == "LA":
        return Image.fromarray(np.stack([plane(), plane()], -1), "LA")
    if mode == "RGB":
        return Image.fromarray(np.stack([plane() for _ in range(3)], -1), "RGB")
    if mode == "RGBA":
        return Image.fromarray(np.stack([plane() for _ in range(4)], -1), "RGBA")
    if mode == "CMYK":
        return Image.fromarray(np.stack([plane() for _ in range(4)], -1), "CMYK")
    if mode == "P":
        im = Image.fromarray(plane(), "L").convert("P")
        im.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        im.info["transparency"] = int(rng.integers(0, 256))
        return im
    if mode == "I;16":
        arr = plane(65536, np.uint16)
        return Image.frombytes("I;16", (width, height), arr.astype("<u2").tobytes())
    raise ValueError(f"unknown mode {mode!r}; known: {IMAGE_MODES}")


def with_exif_orientation(image: Image.Image, orientation: int | None) -> Image.Image:
    """The image as a decoder hands it over after reading a file: PNG (lossless; JPEG for
    CMYK, which PNG cannot hold), with an EXIF orientation tag when ``orientation`` is given."""
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    # compress_level 1: large noisy PNGs take seconds at the default level
    kwargs: dict[str, Any] = {"quality": 95} if fmt == "JPEG" else {"compress_level": 1}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buf, fmt, **kwargs)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out
