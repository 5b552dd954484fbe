"""Loading a config: YAML files of overrides, dotted `key=value` overrides, dicts, saving.

Every section and default lives in :mod:`a2bs.config.sections`; this module only reads and writes them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from a2bs.config.sections import Config, ConfigError


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field type, or raise ConfigError."""
    origin = get_origin(typ)
    try:
        if origin is tuple:
            inner = get_args(typ)[0]
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(_coerce(v, inner, key) for v in value)
        if typ is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("true", "1", "yes", "on"):
                    return True
                if lowered in ("false", "0", "no", "off"):
                    return False
                raise TypeError
            if isinstance(value, bool):
                return value
            raise TypeError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if typ is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"config key '{key}': cannot use {value!r} as {getattr(typ, '__name__', typ)}")


def _apply(section: Any, updates: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(type(section))
    names = {f.name for f in fields(section)}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(section, key)
        if is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{full}' is a section; give a mapping")
            changes[key] = _apply(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(section, **changes)


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate positional inputs from ``key=value`` overrides (an override has '=' before any '/')."""
    inputs, overrides = [], []
    for item in items:
        head = item.split("/", 1)[0]
        (overrides if "=" in head and not item.startswith("s3://") else inputs).append(item)
    return inputs, overrides


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c.d=[1,2]"]`` into a nested mapping (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}' has an empty key")
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override")
        node[parts[-1]] = value
    return nested


def _read_yaml(path: str | os.PathLike) -> Mapping[str, Any]:
    """The sections of a config file (a mapping), or ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {p}: top level must be a mapping of sections")
    return data


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    base: Config | None = None,
) -> Config:
    """Defaults (or `base`) <- YAML file overrides <- key=value overrides."""
    cfg = base or Config()
    if path:
        cfg = _apply(cfg, _read_yaml(path), "")
    if overrides:
        mapping = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        cfg = _apply(cfg, mapping, "")
    return cfg


def user_overrides(
    path: str | os.PathLike | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> dict[str, Any]:
    """What the user set explicitly: the config file's sections with the key=value overrides on top.

    The keys are the ones :func:`load_config` applies (it validates them); a stage that must not
    contradict a recorded setting (e.g. a model's audio front end) checks exactly these.
    """

    def merge(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in new.items():
            if isinstance(value, Mapping) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = merge({}, value) if isinstance(value, Mapping) else value
        return into

    out: dict[str, Any] = merge({}, _read_yaml(path)) if path else {}
    return merge(out, overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from `config_to_dict` output (e.g. stored in a checkpoint)."""
    return _apply(Config(), data, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""

    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return conv(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from a2bs.runtime.storage import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
