"""A typed config tree from YAML: ``key=value`` overrides, then dataclasses checked key by key.

Generic machinery of :mod:`pipeline.config` and :mod:`pipeline.eval.config`: unknown keys and
wrong types are ConfigErrors naming the dotted key. A dataclass of the tree may define

- ``from_mapping(data, prefix)`` (classmethod): build itself from its mapping (``ModelConfig``);
- ``SHORTHAND`` (class variable): the key a non-mapping value sets (``data.train=path`` sets
  ``data.train.shards`` and keeps the section's other keys);
- ``to_plain()``: its plain form in ``to_dict`` (``ModelConfig``: the resolved architecture).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or an unusable value."""


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML, MLflow and checkpoints."""
    return yaml.safe_load(yaml.safe_dump(_plain(cfg)))


def _plain(x: Any) -> Any:
    if hasattr(x, "to_plain"):
        return _plain(x.to_plain())
    if dataclasses.is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def raw_tree(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), shorthand: str = ""
) -> dict:
    """The YAML mapping at ``path`` (optional) with ``a.b=value`` overrides applied, unvalidated;
    a non-mapping value given to a section sets that section's ``shorthand`` key."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_steps=20")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value != "" else None, shorthand)
    return raw


def _set_dotted(tree: dict, key: str, value: Any, shorthand: str) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {p!r} is not a section")
        tree = node
    if shorthand and isinstance(tree.get(leaf), dict) and not isinstance(value, dict):
        tree[leaf][shorthand] = value  # e.g. a loader section given its shard set: keep its keys
    else:
        tree[leaf] = value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    if hasattr(cls, "from_mapping"):
        return cls.from_mapping(mapping(data, prefix), prefix)
    return cls(**checked_fields(cls, data, prefix))


def mapping(data: Any, prefix: str) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {type(data).__name__}"
        )
    return data


def checked_fields(cls: type, data: Any, prefix: str) -> dict:
    """The keys of ``data`` (all fields of dataclass ``cls``), each coerced to its field's type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping(data, prefix)) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    return {k: coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}


def coerce(tp: Any, value: Any, key: str) -> Any:
    if getattr(tp, "SHORTHAND", None) and not isinstance(value, dict):
        value = {tp.SHORTHAND: value}  # e.g. a loader section given as its shard set alone
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return coerce(_member(args, value, key), value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if tp in (int, str, bool, float) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _member(args: tuple, value: Any, key: str) -> Any:
    """The member of a union type that ``value``'s kind calls for: a list type for a list, a
    dataclass for a mapping, else the one other member (a ConfigError when there are several)."""
    inner = [a for a in args if a is not type(None)]
    for a in inner:
        if isinstance(value, (list, tuple)) and typing.get_origin(a) in (list, tuple):
            return a
        if isinstance(value, dict) and dataclasses.is_dataclass(a):
            return a
    if len(inner) == 1:
        return inner[0]
    plain = [a for a in inner if typing.get_origin(a) is None and not dataclasses.is_dataclass(a)]
    if len(plain) == 1 and isinstance(value, plain[0]):
        return plain[0]
    kinds = [
        "a mapping" if dataclasses.is_dataclass(a) else (typing.get_origin(a) or a).__name__
        for a in inner
    ]
    raise ConfigError(f"{key}: expected {' or '.join(kinds)}, got {value!r}")


def lookup(cfg: Any, key: str) -> Any:
    """``cfg.a.b`` for ``key`` = ``"a.b"``."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_values(cfg: Any, choices: dict[str, tuple], positive: tuple[str, ...]) -> None:
    """Each ``choices`` key holds one of its values; each ``positive`` key is > 0 (or None)."""
    for key, allowed in choices.items():
        value = lookup(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
    for key in positive:
        value = lookup(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
