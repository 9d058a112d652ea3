"""Errors a user can act on: each names the file, the place in it and the fix."""
from __future__ import annotations

from pathlib import Path


class ZooconformError(Exception):
    """Base class: a problem with the user's input, not with the harness."""


class ConfigError(ZooconformError):
    """A malformed card, manifest, budget or tolerance file."""

    def __init__(self, file: Path | str, key: str, problem: str, fix: str = ""):
        self.file, self.key, self.problem, self.fix = Path(file), key, problem, fix
        msg = f"{file}: [{key}] {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class InputError(ZooconformError):
    """A missing, corrupt or mismatching user file (image, label file, checkpoint, ONNX)."""

    def __init__(self, file: Path | str, problem: str, fix: str = ""):
        self.file, self.problem, self.fix = Path(file), problem, fix
        msg = f"{file}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class OptionError(ConfigError):
    """A command-line option whose value cannot work (``--threads -1``, a ``--weights-dir`` that
    does not exist): a usage error, raised before anything runs."""

    def __init__(self, option: str, value, problem: str, fix: str = ""):
        self.option, self.value = option, value
        self.file, self.key, self.problem, self.fix = Path(option), option, problem, fix
        msg = f"{option} {value}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        Exception.__init__(self, msg)
