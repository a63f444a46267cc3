"""Loading a job: YAML files (with their line numbers) + dotted overrides -> `Config`, or a UserError.

A job is one YAML file in `configs/` that names only what it changes from the defaults of
`tandem.config.schema`; a file may start from another with `base: other.yaml` (a path relative to
it). Command-line overrides are `key.sub=value` with YAML-typed values. Every error names the key, the
file and line it came from and what was expected, and is raised as `UserError` (the CLI exits with
code 2).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tandem.config.schema import Config
from tandem.errors import UserError


@dataclass(frozen=True)
class _Origin:
    source: str  # a file path or "command line"
    line: int | None

    def __str__(self) -> str:
        return f"{self.source}, line {self.line}" if self.line else self.source


def _node_to_python(node: yaml.Node, prefix: str, origins: dict[str, _Origin], source: str) -> Any:
    """Build plain Python from a YAML node, recording where every dotted key was written."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            path = f"{prefix}.{key}" if prefix else key
            origins[path] = _Origin(source, key_node.start_mark.line + 1)
            out[key] = _node_to_python(value_node, path, origins, source)
        return out
    return yaml.safe_load(yaml.serialize(node))


def _read_yaml(path: Path, origins: dict[str, _Origin], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise UserError(f"{path}: `base` includes itself ({' -> '.join(map(str, seen))})")
    try:
        node = yaml.compose(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}: a config must be a mapping of sections, got {node.tag.rsplit(':', 1)[-1]}")
    own: dict[str, _Origin] = {}
    data = _node_to_python(node, "", own, str(path))
    base = data.pop("base", None)
    own.pop("base", None)
    merged: dict[str, Any] = {}
    if base is not None:
        merged = _read_yaml(path.parent / str(base), origins, (*seen, path.resolve()))
    origins.update(own)
    return _deep_merge(merged, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(data: dict[str, Any], item: str, origins: dict[str, _Origin]) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value
    origins[key] = _Origin("command line", None)


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _valid_keys(ann, path + ".")
    return keys


def _loc_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _origin_of(path: str, origins: dict[str, _Origin]) -> str:
    while path:
        if path in origins:
            return f" ({origins[path]})"
        path = path.rpartition(".")[0]
    return ""


def _explain(err: ValidationError, origins: dict[str, _Origin]) -> str:
    lines = []
    valid = _valid_keys(Config)
    for e in err.errors():
        path = _loc_path(e["loc"])
        where = _origin_of(path, origins)
        if e["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(path, valid, n=1, cutoff=0.5)
            hint = f"; did you mean `{guess[0]}`?" if guess else ""
            lines.append(f"unknown key `{path}`{where}{hint}")
        elif not path:  # a model-level check with no single field
            lines.append(e["msg"])
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            msg = e["msg"][0].lower() + e["msg"][1:]
            lines.append(f"`{path}`{shown}{where}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a job: the YAML file (and its `base` chain), then `key.sub=value` overrides."""
    origins: dict[str, _Origin] = {}
    data = _read_yaml(Path(path), origins) if path is not None else {}
    for item in overrides:
        _apply_override(data, item, origins)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise UserError(_explain(e, origins)) from None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`cfg` with `key.sub=value` overrides applied, as if they had followed its file on the command
    line: values it left unset stay unset (PPO derives its batch sizes from those)."""
    origins: dict[str, _Origin] = {}
    data = cfg.model_dump(mode="json", exclude_unset=True)
    for item in overrides:
        _apply_override(data, item, origins)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise UserError(_explain(e, origins)) from None


def dump_config(cfg: Config, only_set: bool = False) -> str:
    """The fully resolved config as YAML (what `tandem config show` prints and run folders keep).

    `only_set`: just the values the files and overrides set, so a job loaded from it tells set from
    defaulted values as the original did (PPO derives the batch sizes the user left unset).
    """
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=only_set), sort_keys=False)
