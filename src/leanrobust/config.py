"""Reading configs: YAML files (a duplicate key refused), `key=value` overrides, validation against the
schema (config_schema.py) with errors that name the key and suggest the closest, and the YAML a run writes.
The schema's names are importable from here too, as before it moved out."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config_schema import (SELECTION_METHODS, DataConfig, EvalConfig, LoggingConfig, ModelConfig, ObjectiveConfig,
                            OptimConfig, RunConfig, SelectionConfig, ValidationConfig, did_you_mean)

__all__ = ["MAX_INT", "SELECTION_METHODS", "ConfigError", "DataConfig", "EvalConfig", "LoggingConfig", "ModelConfig",
           "ObjectiveConfig", "OptimConfig", "RunConfig", "SelectionConfig", "ValidationConfig", "apply_overrides",
           "check_numbers", "did_you_mean", "dump_config", "load_config", "validate_config", "yaml_load"]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _section_fields(loc: tuple) -> list[str]:
    """The keys allowed at `loc` (a path of section names) in the schema, [] when it is not a section."""
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _key_hint(loc: tuple) -> str:
    """For an unknown key: the closest key of its section, or the section that has a key of that name."""
    key = str(loc[-1])
    elsewhere = [f"{s}.{key}" for s in RunConfig.model_fields if key in _section_fields((s,))]
    return f" (did you mean {elsewhere[0]!r}?)" if elsewhere else did_you_mean(key, _section_fields(loc[:-1]))


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_key_hint(e['loc'])}")
        elif e["type"] == "literal_error":
            choices = [c.strip(" '\"") for c in e.get("ctx", {}).get("expected", "").replace(" or ", ", ").split(",")]
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r}){did_you_mean(e.get('input'), choices)}")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):  # a check across keys: it names them
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
    return f"invalid config {source}:\n" + "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a mapping with the same key twice (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def yaml_load(text: str) -> Any:
    """Read YAML safely, refusing duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


MAX_INT = 2**53  # no setting needs more; larger values overflow torch's int64 arithmetic (seeds, counts)


def check_numbers(obj: Any, path: str = "", _seen: set | None = None) -> None:
    """Reject non-finite floats and integers beyond +-2^53 anywhere in a raw config, naming the key
    (objective.params and selection.params are free-form, so the schema alone cannot catch them there).
    Each container is visited once, so YAML aliases cannot make the walk exponential or endless."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in seen:
            return
        seen.add(id(obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_numbers(v, f"{path}.{k}" if path else str(k), seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_numbers(v, f"{path}[{i}]", seen)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{path or 'config'}: {obj} is not a finite number; every number in a config must be finite")
    elif isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > MAX_INT:
        raise ConfigError(f"{path or 'config'}: {obj} is too large (limit +-2^53)")


def _parse_value(text: str) -> Any:
    """A --set value is read as YAML so that numbers, booleans, lists and null work."""
    try:
        return yaml_load(text)
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(f"override value {text!r}: {e.problem}") from None
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (new keys are caught by validation)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return raw


def validate_config(raw: dict, source: str = "<dict>", *, lenient: bool = False) -> RunConfig:
    """lenient: settings the run would ignore only warn (re-reading an existing run's config); a run
    written before `data.val_seed` existed keeps its split (val_seed null: the run's own seed)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping of sections, "
                          f"got {type(raw).__name__}")
    if lenient and isinstance(raw.get("data"), dict) and "val_seed" not in raw["data"]:
        raw = {**raw, "data": {**raw["data"], "val_seed": None}}
    try:
        check_numbers(raw)
    except ConfigError as e:
        raise ConfigError(f"invalid config {source}:\n  {e}") from None
    try:
        return RunConfig.model_validate(raw, context={"lenient": lenient})
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, lenient: bool = False) -> RunConfig:
    """Read a YAML config (or the defaults when path is None), apply overrides, validate (lenient: see
    validate_config; for a run directory's own config.yaml)."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e})") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        if not raw and not overrides:
            if not lenient:
                raise ConfigError(f"{path} is empty: it would train the full default (all of Fashion-MNIST, "
                                  "10 epochs of PGD-AT); write the settings you mean (see `leanrobust config show` "
                                  "for every default, or start from configs/fmnist_demo.yaml)")
            warnings.warn(f"{path} is empty: using the defaults", stacklevel=2)
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source, lenient=lenient)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
