"""Reference preprocessing pipelines: exactly what the seed cards' torchvision code does.

HRNet / RepVGG: ``Resize(256)`` (short side), ``CenterCrop(224)``, ``ToTensor``, ``Normalize``.
ResNeSt: ``ECenterCrop(S)`` (seed 001's code, reproduced below), ``ToTensor``, ``Normalize``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .zoo import Preprocess

if TYPE_CHECKING:
    from torchvision.transforms import InterpolationMode

# torchvision is imported where a pipeline is built, not with this module: `import torchvision`
# pulls in torch._dynamo (torchvision.ops), 1.35 s of every pytest process's start on 2 cores,
# and the processes that build no pipeline (xdist's controller, the latency phase, the nested
# runs of tests/) do not need it


def _tv_interp(name: str) -> InterpolationMode:
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}[name]


class ECenterCrop:
    """Seed 001's ``ECenterCrop``: crop a centred square of ``S/(S+32)`` of the short side,
    offsets with Python's ``round`` (half to even), then ``Resize((S, S), BICUBIC)``."""

    def __init__(self, imgsize: int, interpolation: Any = None):
        from torchvision import transforms

        self.imgsize = imgsize
        self.resize_method = transforms.Resize((imgsize, imgsize),
                                               interpolation=_tv_interp("bicubic") if interpolation is None else interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        image_width, image_height = img.size
        image_short = min(image_width, image_height)
        crop_size = float(self.imgsize) / (self.imgsize + 32) * image_short
        crop_height, crop_width = crop_size, crop_size
        crop_top = int(round((image_height - crop_height) / 2.0))
        crop_left = int(round((image_width - crop_width) / 2.0))
        img = img.crop((crop_left, crop_top, crop_left + crop_width, crop_top + crop_height))
        return self.resize_method(img)


def reference_transform(pre: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """The card's pipeline as a torchvision transform (PIL RGB image -> (3, S, S) float32)."""
    from torchvision import transforms

    interp = _tv_interp(pre.interpolation)
    if pre.pipeline == "resize_then_crop":
        geometry = [transforms.Resize(pre.resize, interpolation=interp), transforms.CenterCrop(pre.crop)]
    elif pre.pipeline == "ecenter_crop":
        geometry = [ECenterCrop(pre.crop, interpolation=interp)]
    else:  # validated in zoo.py; kept for a card built by hand
        raise ValueError(f"unknown pipeline {pre.pipeline!r}")
    return transforms.Compose([*geometry, transforms.ToTensor(),
                               transforms.Normalize(mean=list(pre.mean), std=list(pre.std))])


def reference_batch(images: Sequence[Image.Image], pre: Preprocess) -> torch.Tensor:
    """Stack of the reference pipeline's outputs, NCHW float32."""
    tf = reference_transform(pre)
    if not images:
        return torch.empty(0, 3, pre.crop, pre.crop)
    return torch.stack([tf(im.convert("RGB")) for im in images])
