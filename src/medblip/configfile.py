"""YAML config files into pydantic models, with ``--set a.b=c`` overrides: the one config loader.

Every problem is one :class:`~medblip.errors.ConfigError` line naming the file (or the ``--set``
item) and the key, e.g. ``exp.yaml: train.lrr: unknown key`` or
``cmp.yaml: systems[1].name: duplicate system name 'base'``. The experiment config
(:mod:`medblip.training.config`), the compare config (:mod:`medblip.experiments.compare`) and the demo
recipes (:mod:`medblip.experiments.demo`) are read with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from medblip.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def shipped_config(name: str) -> Path:
    """A file of the repository's ``configs/`` (current directory first, then beside the sources)."""
    for base in (Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"):
        if (base / name).is_file():
            return base / name
    raise ConfigError(f"configs/{name} not found (looked in ./configs and beside the medblip sources); "
                      "run the demo from the repository root")


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true / false.

    YAML 1.1 (PyYAML's default) also reads yes / no / on / off as booleans, so ``mixed_precision: no`` or
    ``--set train.mixed_precision=no`` arrived as False and was rejected ("got False"). Here they stay the
    strings users typed; a boolean key still accepts them (pydantic reads "no" / "off" as False).
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse config YAML (a file's text or an override's value) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


class KeyedError(ValueError):
    """Raised by a model validator that knows the config key at fault (pydantic would name the model)."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key, self.msg = key, msg


def read_yaml(path: str | Path, *, expected: str = "a mapping of keys") -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {expected}, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 1e-4); the value is YAML, so lists/bools/null work."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({exc.__class__.__name__})") from None
    # YAML reads "1e-4" as a string; pydantic's lax mode turns it into the float the field wants.
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> set[str]:
    """Apply ``--set`` items to ``raw`` in place; returns the dotted keys they set."""
    keys: set[str] = set()
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:depth + 1])} is not a section")
            node = child
        node[path[-1]] = value
        keys.add(".".join(path))
    return keys


def format_loc(loc: Sequence[Any]) -> str:
    """A pydantic error location as a config key: ``systems[1].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(err: Any, source: str, overridden: set[str]) -> str:
    keyed = (err.get("ctx") or {}).get("error")
    if isinstance(keyed, KeyedError):
        return f"{source}: {keyed.key}: {keyed.msg}"
    key = format_loc(err["loc"])
    # An override is named as the user typed it; a file problem as "file: key".
    where = f"--set {key}" if key in overridden else f"{source}: {key}"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    if err["type"] == "value_error":  # our own validators already name the value
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    shown = err.get("input")
    if isinstance(shown, dict | list):
        return f"{where}: {err['msg']}"
    return f"{where}: {err['msg']} (got {shown!r})"


def validate(model: type[M], raw: Any, source: str, overridden: set[str] | None = None, *,
             expected: str = "a mapping of keys") -> M:
    """``model`` validated from ``raw``; the first problem is one ConfigError line (with a count of the rest)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected {expected}, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = _message(errors[0], source, overridden or set())
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None


def load(model: type[M], path: str | Path, overrides: Iterable[str] = (), *,
         expected: str = "a mapping of keys") -> M:
    """Read, override (``--set`` items) and validate a config file."""
    raw = read_yaml(path, expected=expected)
    overridden = apply_overrides(raw, overrides)
    return validate(model, raw, str(path), overridden, expected=expected)
