"""Stage configs: frozen dataclasses loaded from a group of ``params.yaml``.

Every stage has one frozen dataclass. :func:`from_mapping` builds it from a plain mapping,
rejecting unknown keys and wrong types with a message that names the key, the file and the
fix. The resolved config (``dataclasses.asdict``) is stored with every output.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from cirl.errors import CirlError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ``TypeError`` with a short reason."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError("; ".join(errors))
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError(f"expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise TypeError(f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise TypeError(f"expected a path, got {value!r}")
    raise TypeError(f"unsupported config type {_type_name(tp)}")


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, strictly.

    Args:
        cls: a dataclass type whose field annotations are int, float, bool, str, Path,
            Literal[...], tuple[...] or optionals of those.
        data: the values; missing keys take the dataclass defaults.
        where: where the values came from (``params.yaml:prepare``), used in messages.

    Returns:
        An instance of ``cls``; its ``__post_init__`` may add range checks.

    Raises:
        CirlError: on an unknown key (listing the valid ones) or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise CirlError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise CirlError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are: {', '.join(sorted(fields))}"
        )
    values = {}
    for key, value in data.items():
        try:
            values[key] = _coerce(value, hints[key], key)
        except TypeError as exc:
            raise CirlError(
                f"{where}: key {key!r} has a wrong value: {exc} "
                f"(expected type {_type_name(hints[key])})"
            ) from None
    try:
        return cls(**values)
    except ValueError as exc:
        raise CirlError(f"{where}: {exc}") from None


def load_group(path: str | os.PathLike, group: str) -> dict[str, Any]:
    """Read one top-level group of a YAML params file (empty dict if the group is absent)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CirlError(f"params file {path} not found; pass an existing --params file") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CirlError(f"params file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping):
        raise CirlError(f"params file {path}: expected groups of keys at the top level")
    group_values = doc.get(group) or {}
    if not isinstance(group_values, Mapping):
        raise CirlError(f"params file {path}: group {group!r} must be a mapping of keys")
    return dict(group_values)


def resolve(
    cls: type[T],
    group: str,
    params: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Defaults, then the ``group`` of the params file, then non-None ``overrides`` (CLI flags)."""
    values: dict[str, Any] = {}
    where = "command-line options"
    if params is not None:
        values.update(load_group(params, group))
        where = f"{params}:{group} and command-line options"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return from_mapping(cls, values, where)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able values (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


# The stage configs by params.yaml group: the one declaration from which the CLI options, the
# KFP components' parameters and the params.yaml groups are derived. Import paths, not classes,
# so that ``import cirl.config`` stays light.
# the groups the training pipeline's tasks read (one pipeline parameter each)
PIPELINE_GROUPS = ("prepare", "train", "select", "evaluate", "export", "tracking", "register")

STAGE_CONFIGS: dict[str, str] = {
    "synth": "cirl.data.synth:SynthConfig",
    "prepare": "cirl.data.prepare:PrepareConfig",
    "train": "cirl.method.train_config:TrainConfig",
    "select": "cirl.method.selection:SelectConfig",
    "evaluate": "cirl.method.evaluate:EvaluateConfig",
    "export": "cirl.deploy.export:ExportConfig",
    "predict": "cirl.deploy.predict_config:PredictConfig",
    "tracking": "cirl.lineage.tracking:TrackingConfig",
    "register": "cirl.lineage.registry:RegisterConfig",
    "promote": "cirl.lineage.registry:PromoteConfig",
    "audit": "cirl.audit:AuditConfig",
    "sweep": "cirl.tuning.space:SweepConfig",
}


def stage_config(group: str) -> type:
    """The frozen config dataclass of a ``params.yaml`` group.

    Raises:
        CirlError: on an unknown group, listing the valid ones.
    """
    import importlib

    try:
        module, name = STAGE_CONFIGS[group].split(":")
    except KeyError:
        raise CirlError(
            f"unknown stage group {group!r}; valid groups are: {', '.join(STAGE_CONFIGS)}"
        ) from None
    return getattr(importlib.import_module(module), name)


def field_help(cls: type) -> dict[str, str]:
    """One help line per field, from the ``Attributes:`` section of the class docstring.

    Entries are ``name: text`` (``a, b: text`` documents several fields at once), continued
    on more deeply indented lines, Google style.
    """
    import inspect
    import re

    doc = inspect.getdoc(cls) or ""
    helps: dict[str, str] = {}
    names: list[str] = []
    in_attributes = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attributes = True
            continue
        if not in_attributes:
            continue
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^ {4}([A-Za-z_][\w, ]*):\s*(.*)$", line)
        if entry:
            names = [n.strip() for n in entry.group(1).split(",")]
            for name in names:
                helps[name] = entry.group(2).strip()
        elif line.strip() and names:
            for name in names:
                helps[name] += " " + line.strip()
    return helps


def defaults(cls: type) -> dict[str, Any]:
    """The dataclass defaults as plain JSON-able values."""
    return to_dict(cls())
