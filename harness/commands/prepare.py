"""``zooconform prepare``: inputs for an external runtime, as the seeds' image2npz.py makes them.

Writes ``--out DIR``: ``inputs/<stem>.npz`` (key ``input_0``, float32 (1, 3, S, S), the
card's preprocessing applied), ``datalist.txt`` (one input per line, for ``vamp --datalist``
or any runtime), ``reference.npz`` (the torch reference's logits), ``val_label.txt`` when
the images have labels, and ``prepare.json``. Layout and output naming: harness/bridge.py.

Images: ``--imagenet DIR`` (the whole folder; ``--images N`` for N images of its evaluation
split) or the embedded set (``--images N``, default 200). Weights: ``--weights-dir`` or a
manifest ``checkpoint``, else the seeded default. Note the size: one 224x224 input is 602 kB.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model id, e.g. repvgg_a0")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (new, empty, or a previous prepare's)")
    p.add_argument("--imagenet", default=None, metavar="DIR", help="ImageNet val folder (val/*.JPEG + val_label.txt)")
    p.add_argument("--images", type=int, default=None, metavar="N",
                   help="number of images (default: 200 embedded; the whole ImageNet folder)")
    p.add_argument("--weights-dir", default=None, metavar="DIR", help="reference weights <id>.pth / <id>.safetensors")
    p.add_argument("--artifacts", default=None, metavar="PATH", help="TOML manifest (its checkpoint is the reference)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="artifact cache (default .zooconform-cache)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads")
    p.add_argument("--batch-size", type=int, default=16, metavar="B")
    p.add_argument("--floor-images", type=int, default=None, metavar="N",
                   help="images whose fp32 noise floor is measured in float64 (slow on CPU; default: all "
                        "embedded images, 200 of an ImageNet folder; the rest get the largest floor measured)")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from ..bridge import prepare
    from ..errors import ZooconformError
    from ..lab import Lab, Settings
    from ..zoo import UnknownModelError

    if extra:
        print(f"zooconform prepare: unknown arguments {extra}", file=sys.stderr)
        return 2
    try:
        lab = Lab(Settings(models=[args.model], imagenet=Path(args.imagenet) if args.imagenet else None,
                           weights_dir=Path(args.weights_dir) if args.weights_dir else None,
                           artifacts=Path(args.artifacts) if args.artifacts else None,
                           cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                           eval_images=args.images, threads=args.threads))
        meta = prepare(lab, lab.cards[0], Path(args.out), batch_size=args.batch_size, floor_images=args.floor_images)
    except (UnknownModelError, ZooconformError) as e:
        print(f"zooconform prepare: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    print(f"prepared {meta['images']} inputs of {meta['model']} ({meta['data']}; weights: {meta['weights']['kind']}) "
          f"in {out}")
    if meta["skipped"]:
        print(f"skipped {len(meta['skipped'])} image(s), first: {meta['skipped'][0]}")
    print(f"next: run the runtime over {out / 'datalist.txt'} (input key input_0), writing <stem>.npz "
          f"(key output_0) or <stem>.bin (float32) per line; then zooconform eval --model {meta['model']} "
          f"--prepared {out} --results DIR")
    return 0
