"""The user's deployment artifacts: a TOML manifest (``--artifacts PATH``).

::

    [models.hrnet_w18]
    checkpoint = "weights/hrnet_w18.pth"      # reference weights (.pth or .safetensors)
    onnx = "deploy/hrnet_w18.onnx"            # fp32 ONNX under test
    int8_onnx = "deploy/hrnet_w18.int8.onnx"  # quantized ONNX under test
    preprocess = "deploy/hrnet_w18.pre.json"  # deploy-side preprocessing config
    deploy_checkpoint = "..."                 # RepVGG deploy-form state dict under test

Relative paths resolve against the manifest's folder. Structural problems (bad TOML,
unknown model id, unknown key) are errors for the whole manifest; a missing file is an
error of that model's entry only, raised when a check asks for it, so the rest of the run
goes on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tomllib
from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from .config import Expect, Strict, problem, validate
from .errors import ConfigError, InputError


def _a_path(value: str) -> str:
    if not value.strip() or "\0" in value:
        raise problem(f"expected a path, got {value!r}", fix='write it as "relative/or/absolute/path"')
    return value


_Path = Annotated[str, Expect("a path string", fix='write it as "relative/or/absolute/path"'), AfterValidator(_a_path),
                  Field(min_length=1)]


class Entry(Strict):
    """[models.<id>]: the files of one model; relative paths resolve against the manifest's folder."""

    checkpoint: _Path | None = Field(None, description="reference weights (.pth or .safetensors)")
    onnx: _Path | None = Field(None, description="the fp32 ONNX under test")
    int8_onnx: _Path | None = Field(None, description="the quantized ONNX under test")
    preprocess: _Path | None = Field(None, description="a deploy-side preprocessing config (JSON)")
    deploy_checkpoint: _Path | None = Field(None, description="a RepVGG deploy-form state dict under test")


class File(Strict):
    """The --artifacts TOML file: the user's deployment artifacts, per model of the registry."""

    # validated with context={"valid_ids": [...]}: the registry's ids

    models: dict[str, Entry] = Field({}, description="[models.<id>]: the files of one model")

    @field_validator("models", mode="before")
    @classmethod
    def _known_ids(cls, models: Any, info: ValidationInfo) -> Any:
        valid = (info.context or {}).get("valid_ids")
        if isinstance(models, dict) and valid is not None:
            for mid in models:
                if mid not in valid:
                    raise problem(f"unknown model id {mid!r}", fix=f"valid ids: {', '.join(valid)}", key=mid)
        return models


KEYS = tuple(Entry.model_fields)


@dataclass
class ModelArtifacts:
    model_id: str
    paths: dict[str, Path] = field(default_factory=dict)
    manifest: Path | None = None

    def get(self, key: str) -> Path | None:
        """The file for ``key``, or None when the manifest does not name one.

        A named file that does not exist is an error naming the manifest, the key and the path.
        """
        if key not in KEYS:
            raise KeyError(key)
        p = self.paths.get(key)
        if p is None:
            return None
        if p.is_dir():
            raise InputError(p, f"named by {self.manifest} [models.{self.model_id}] {key} but is a directory, "
                                f"not a file", fix="name the file inside it")
        if not p.is_file():
            raise InputError(p, f"named by {self.manifest} [models.{self.model_id}] {key} but not found",
                             fix="fix the path (relative paths resolve against the manifest's folder)")
        return p


@dataclass
class Manifest:
    path: Path | None
    models: dict[str, ModelArtifacts]

    def for_model(self, model_id: str) -> ModelArtifacts:
        return self.models.get(model_id) or ModelArtifacts(model_id, manifest=self.path)


def empty() -> Manifest:
    return Manifest(None, {})


def load(path: Path | str, valid_ids: list[str]) -> Manifest:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(path, "-", "is a directory, not a manifest file", fix="pass --artifacts PATH to the TOML file")
    if not path.is_file():
        raise ConfigError(path, "-", "manifest file not found", fix="pass --artifacts PATH to an existing TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, "-", f"not UTF-8 text ({e.reason} at byte {e.start})",
                          fix="save the manifest as UTF-8") from None
    except OSError as e:
        raise ConfigError(path, "-", f"cannot be read ({e.strerror or e})", fix="check the file's permissions") from None
    return loads(text, path, valid_ids)


def loads(text: str, path: Path | str, valid_ids: list[str]) -> Manifest:
    """The manifest from its text (``path``: where it lives; relative paths resolve against its
    folder). Any text gives a Manifest or a ConfigError naming the key."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "-", f"not valid TOML: {e}", fix="fix the TOML syntax") from None
    doc: File = validate(File, data, path, shape="harness/manifest.py", context={"valid_ids": list(valid_ids)})
    out: dict[str, ModelArtifacts] = {}
    for mid, entry in doc.models.items():
        paths = {}
        for k, v in entry.model_dump(exclude_unset=True).items():
            try:
                p = Path(v).expanduser()
            except RuntimeError as e:  # "~someone" with no such user
                raise ConfigError(path, f"models.{mid}.{k}", f"cannot expand {v!r} ({e})",
                                  fix="write the path without ~user, or relative to the manifest") from None
            paths[k] = p if p.is_absolute() else (path.parent / p).resolve()
        out[mid] = ModelArtifacts(mid, paths, path)
    return Manifest(path, out)
