"""One config layer (issue 16): every config file the harness reads is a pydantic v2 model.

The zoo cards (harness/zoo.py), the artifacts manifest (harness/manifest.py), the latency budget
profiles (harness/latency/budgets.py), the tolerances (harness/tolerances.py), the deploy-side
preprocessing config (harness/preprocess/deploy.py) and fixtures/expectations.toml (below) are
models on :class:`Strict`: unknown keys are refused and nothing is coerced, so a TOML ``true``
is never a number, ``"3"`` never an integer and ``3`` never a string, in every file alike.

:func:`config_error` is the one place a :class:`pydantic.ValidationError` becomes the project's
:class:`~harness.errors.ConfigError`: the file, the key path (``models.repvgg_a0.fp32.b4``), what
was expected and what was got (``expected an integer, got '2' (str)``). A field states its
expected wording with :class:`Expect` and its choices with :class:`OneOf`; a check a type cannot
express raises :func:`problem` with the exact words. The published JSON Schemas
(harness/config_schemas.py) are generated from the same models by :func:`json_schema`.
"""
from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

import tomllib
from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, RootModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from .errors import ConfigError


class Strict(BaseModel):
    """Base of every config file's model: unknown keys refused, no coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


def problem(text: str, fix: str = "", key: str = "") -> PydanticCustomError:
    """A value error in the file's own words, raised by a validator. ``key``: the key it is about,
    relative to the table the validator checks (a model validator names the field this way)."""
    return PydanticCustomError("config", "{problem}", {"problem": text, "fix": fix, "key": key})


@dataclass(frozen=True)
class Expect:
    """``Annotated[int, Expect("an integer (pixels)")]``: any failure of the type (and of the
    constraints before it in the ``Annotated``) is reported as ``expected <words>, got <value>``."""

    words: str
    fix: str = ""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def check(value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> Any:
            try:
                return inner(value)
            except ValidationError:
                raise PydanticCustomError("expected", "expected {expected}",
                                          {"expected": self.words, "fix": self.fix}) from None
        return core_schema.no_info_wrap_validator_function(check, handler(source))


@dataclass(frozen=True)
class OneOf:
    """``Annotated[str, OneOf(("bilinear", "bicubic"))]``: a string, one of the choices (an
    ``enum`` in the JSON Schema)."""

    choices: tuple[str, ...]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        choices = list(self.choices)

        def check(value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> Any:
            if not isinstance(value, str):
                raise PydanticCustomError("expected", "expected {expected}",
                                          {"expected": f"a string, one of {choices}", "fix": f"use one of {choices}"})
            if value not in choices:
                raise problem(f"'{value}' is not one of {choices}", fix=f"use one of {choices}")
            return inner(value)
        return core_schema.no_info_wrap_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"enum": list(self.choices)}


# --- ValidationError -> ConfigError ----------------------------------------------------------

# the expected wording of a plain (un-annotated) strict type
_WORDS = {"int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
          "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table", "list_type": "a list",
          "tuple_type": "a list", "finite_number": "a finite number"}

# ``unknown(file, key, name, known)``: the ConfigError for an unknown key, in the file's wording
UnknownKey = Callable[[Path | str, str, str, list[str]], ConfigError]


def key_path(loc: Sequence[str | int]) -> str:
    """``("models", "x", "published", 0, "top1")`` -> ``models.x.published[0].top1``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # a dict key's own validation: the key is the place
            out += f".{part}" if out else str(part)
    return out or "-"


def got(value: Any) -> str:
    """What the file holds, as a message shows it: ``'30' (str)``, ``True (bool)``."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def close_matches(name: str, known: Sequence[str]) -> list[str]:
    """The known names nearest ``name`` (ties kept: repvgg_ao -> a0, a1, a2), none when all are far."""
    scores = {k: difflib.SequenceMatcher(None, name, k).ratio() for k in known}
    best = max(scores.values(), default=0.0)
    return [k for k in known if scores[k] == best][:3] if best >= 0.6 else []


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """``; did you mean 'a' or 'b'?`` or ``""``."""
    close = close_matches(name, known)
    if not close:
        return ""
    return "; did you mean " + " or ".join(", ".join(f"'{c}'" for c in close).rsplit(", ", 1)) + "?"


def _unwrap(tp: Any) -> Any:
    """The model / container type inside ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys the model allows in the table at ``loc`` (``[]`` when that is no model)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        while isinstance(tp, type) and issubclass(tp, RootModel):
            tp = _unwrap(tp.model_fields["root"].annotation)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            if part in tp.model_fields:
                tp = tp.model_fields[part].annotation
            elif tp.model_config.get("extra") == "allow":  # typed extras: ``__pydantic_extra__: dict[str, X]``
                tp = typing.get_type_hints(tp).get("__pydantic_extra__", dict[str, Any])
                tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
            else:
                return []
        elif origin in (dict, Mapping):
            tp = typing.get_args(tp)[1]
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def config_error(err: ValidationError, file: Path | str, model: type[BaseModel], *, shape: str = "",
                 unknown: UnknownKey | None = None) -> ConfigError:
    """The ConfigError for the first problem of ``err`` (unknown keys first, as a typo usually
    explains the rest): file, key path, expected and got. ``shape``: where the file's shape is
    documented, for the fix; ``unknown``: the file's wording of an unknown key."""
    errors = sorted(err.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = list(first["loc"])
    kind, ctx, value = first["type"], first.get("ctx") or {}, first.get("input")
    see = f" (file shape: {shape})" if shape else ""
    if kind == "extra_forbidden":
        parent = loc[:-1]
        names = sorted(str(e["loc"][-1]) for e in errors
                       if e["type"] == "extra_forbidden" and list(e["loc"][:-1]) == parent)
        known = known_keys(model, parent)
        if unknown is not None:
            return unknown(file, key_path(loc), str(loc[-1]), known)
        return ConfigError(file, key_path([*parent, names[0]]),
                           f"unknown key(s) {names}{did_you_mean(names[0], known)}", fix=f"known keys: {known}")
    name = str(loc[-1]) if loc else "-"
    if kind == "config":
        key = key_path([*loc, *([ctx["key"]] if ctx.get("key") else [])])
        return ConfigError(file, key, ctx["problem"], fix=ctx.get("fix", ""))
    if kind == "missing":
        return ConfigError(file, key_path(loc), f"missing required key '{name}'", fix=f"add {name} = ...{see}")
    words = ctx["expected"] if kind == "expected" else _WORDS.get(kind)
    if words is not None:
        return ConfigError(file, key_path(loc), f"expected {words}, got {got(value)}",
                           fix=ctx.get("fix") or f"write {name} as {words}{see}")
    return ConfigError(file, key_path(loc), f"{first['msg']}, got {got(value)}", fix=f"see the file shape{see}")


def validate(model: type[BaseModel], data: Any, file: Path | str, *, shape: str = "", unknown: UnknownKey | None = None,
             context: dict[str, Any] | None = None) -> Any:
    """``model`` validated from ``data``, or the :func:`config_error` of the first problem."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise config_error(err, file, model, shape=shape, unknown=unknown) from None


# --- JSON Schema -------------------------------------------------------------------------------

class _Schema(GenerateJsonSchema):
    """Draft 2020-12 without pydantic's noise: no generated titles, and no ``null`` (TOML has
    none; an optional key is left out, never written as null)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        out = super().model_schema(schema)
        out.pop("title", None)
        return out

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if out.get("default") is None or out.get("default") in ({}, []):
            out.pop("default", None)
        return out


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema (validation mode) as the published files hold it."""
    return model.model_json_schema(schema_generator=_Schema)


# --- fixtures/expectations.toml --------------------------------------------------------------

class Expectation(Strict):
    """One ``[[xfail]]`` entry (the file's header documents the keys)."""

    test: Annotated[str, Expect("a string (test function name glob)")]
    params: Annotated[str, Expect("a string (case id glob)")]
    reason: Annotated[str, Expect("a string (the measured cause)")]
    strict: bool = True
    host_class: Annotated[str | list[str], Expect(
        "a glob or a list of globs", fix='e.g. host_class = ["x86-avx2", "x86-avx512"] (harness/host.py lists the classes)')
    ] | None = None
    suite_artifacts_only: bool = False


class Expectations(Strict):
    xfail: list[Expectation] = []


def load_expectations(path: Path) -> list[dict[str, Any]]:
    """The ``[[xfail]]`` entries of ``path`` as written (validated; none when the file is absent)."""
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "-", f"not valid TOML: {err}", fix="fix the TOML syntax") from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, "-", f"not UTF-8 text ({err.reason} at byte {err.start})", fix="save it as UTF-8") from None
    validate(Expectations, data, path, shape="the file's header")
    return list(data.get("xfail", []))
