"""Any external runtime, through files: the bridge's formats (``harness/bridge.py``).

Set ``ZOOCONFORM_FILES_COMMAND`` to the command that runs your runtime over a datalist, with
the placeholders ``{model}`` (the ONNX file), ``{datalist}`` (one ``.npz`` per line, key
``input_0``, float32 (1, 3, S, S)), ``{out}`` (the folder to write ``<stem>.npz`` /
``.bin`` / ``.raw`` per line: 1000 float32 logits), and optionally ``{threads}`` and
``{precision}``. The seeds' ``vamp --datalist`` is such a command. Optionally
``ZOOCONFORM_FILES_PRECISION`` names the arithmetic the runtime uses (default fp32), which
this harness cannot read back.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..onnxfile import check_external_data
from .base import BaseSession, fixed_batch_of

ENV = "ZOOCONFORM_FILES_COMMAND"
PRECISION_ENV = "ZOOCONFORM_FILES_PRECISION"
TIMEOUT_S = 600


class FilesSession(BaseSession):
    def __init__(self, command: str, path: Path, threads: int | None, precision: str, fixed_batch: int | None):
        self.command, self.path, self.threads = command, path, threads
        self.runtime = "files"
        self.effective_precision = precision
        self.settings = f"external command ({command.split()[0]}), {precision} as declared by {PRECISION_ENV}"
        self.fixed_batch = fixed_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        from .. import bridge

        with tempfile.TemporaryDirectory(prefix="zc-files-") as d:
            folder = Path(d)
            (folder / bridge.INPUTS).mkdir()
            out = folder / "out"
            out.mkdir()
            lines = []
            for i, img in enumerate(np.ascontiguousarray(batch, dtype=np.float32)):
                p = folder / bridge.INPUTS / f"image_{i:06d}.npz"
                np.savez(p, **{bridge.INPUT_KEY: img[None]})
                lines.append(str(p))
            datalist = folder / bridge.DATALIST
            datalist.write_text("\n".join(lines) + "\n", encoding="utf-8")
            cmd = self.command.format(model=shlex.quote(str(self.path)), datalist=shlex.quote(str(datalist)),
                                      out=shlex.quote(str(out)), threads=self.threads or 0,
                                      precision=self.effective_precision)
            done = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"{ENV} command exited {done.returncode}: {done.stderr.strip()[-300:]}")
            prepared = bridge.Prepared(folder, {}, [Path(ln).stem for ln in lines],
                                       np.zeros((len(lines), bridge.NUM_CLASSES), np.float32),
                                       np.full(len(lines), -1, np.int64), np.full(len(lines), np.nan))
            logits, _, _ = bridge.read_outputs(out, prepared)
            return logits


class FilesRuntime:
    name = "files"
    device = "external"
    exposes_intermediates = False
    runs_module = False

    def available(self) -> tuple[bool, str]:
        if not os.environ.get(ENV):
            return False, (f"{ENV} is not set: name the command that runs your runtime over a datalist "
                           "(placeholders {model} {datalist} {out}); see harness/runtimes/files.py")
        return True, ""

    def supports(self, precision: str, batch: int | None = None) -> tuple[bool, str]:
        return True, ""

    def prepare(self, onnx_path: Path | str, threads: int | None = None, precision: str = "fp32", *,
                model: Any = None) -> FilesSession:
        path = Path(onnx_path)
        check_external_data(path)
        declared = os.environ.get(PRECISION_ENV, "fp32")
        return FilesSession(os.environ[ENV], path.resolve(), threads, declared, fixed_batch_of(path))


RUNTIME = FilesRuntime()
