"""Configs from files: a TrainConfig from a YAML file, a preset name or the defaults, then dotted
overrides; relative paths resolved against the file that names them; init_from's model filled in."""

from __future__ import annotations

import glob
import os
import pathlib
import re
import sys
from typing import Any

import yaml

from gptjax.config import ConfigError, TrainConfig, from_dict


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently, so `n_layers: 4` then `n_layers: 6` trained 6 layers without a word). Keys brought
    in by a merge (`<<: *base`) may be overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise _DuplicateKey(key, lines[key], line)
                    lines[key] = line
                except TypeError:  # an unhashable key: the base constructor says so
                    pass
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str) -> Any:
    """YAML text read strictly; a syntax error or a duplicate key is a ConfigError naming `where`
    (the file, or the override), the line and the column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        raise ConfigError(f"{where}: {e.key!r} is given twice, on line {e.first} and on line {e.second}; keep "
                          "one of them") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}: {at}{what} (YAML syntax)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {e} (YAML syntax)") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.field=value` with a YAML value (`[1, 2]`, `null`, `3e-4`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.field=value")
    value = load_yaml(raw, f"override {text!r}") if raw.strip() else None
    return key.split("."), value


def load_train_config(source: str | None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file, a preset name or (None) the defaults, then dotted
    overrides, validated."""
    from gptjax.presets import PRESETS, get_preset

    path = pathlib.Path(source or "")
    if source is None:  # every section at its defaults (init_from then sets the model)
        data: dict[str, Any] = {}
    elif path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {source!r} does not exist")
        data = load_yaml(path.read_text(), f"config file {source}") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        data = resolve_paths(data, path.resolve().parent, str(path))
        data.setdefault("name", path.stem)
    elif source in PRESETS:
        # A preset's shape with the documented defaults of every other section.
        data = {"name": source, "model": get_preset(source).to_dict()}
    else:
        get_preset(source)  # raises with the nearest preset names
        raise AssertionError("unreachable")
    for text in overrides:
        keys, value = parse_override(text)
        value = resolve_paths(value, None, f"override {text!r}", ".".join(keys))
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    if data.get("init_from") is not None:
        from gptjax.training import warm_start

        data = warm_start.resolve(data)
    return from_dict(TrainConfig, data)


# ---------------------------------------------------------------------------------------------
# Paths. A relative path written in a file (a config file, a sweep file) is read from that file's
# directory, wherever the command runs. One found only relative to the current directory is used
# from there with a warning, so files written before this rule keep working. Paths on the command
# line are relative to the current directory. Named corpora and presets are names, not paths;
# URLs (gs://, s3://) are left as written; ~ and $VAR / ${VAR} are expanded (an unset variable is
# an error). Everything else is stored absolute, so a resolved config means the same from any
# directory.

PATH_FIELDS = ("init_from", "data.corpus", "data.text_files", "data.val_files", "data.sft_files",
               "data.tokenizer_path", "data.token_dir", "finetune.train_file", "finetune.eval_file",
               "eval.sets.*", "eval.tasks.*.data", "eval.tasks.*.fewshot_data")
NAME_OR_PATH_FIELDS = ("data.corpus",)  # `tinyshakespeare` is a corpus name, `my.txt` a path
_NAME = re.compile(r"[A-Za-z][\w-]*")
_warned: set[str] = set()


def resolve_paths(value: Any, origin: pathlib.Path | None, where: str, key: str = "") -> Any:
    """`value` (a config mapping, nested or with dotted keys, or the value of `key`) with the
    relative paths of PATH_FIELDS resolved against `origin`, the directory of the file naming
    them (None: the current directory)."""
    if isinstance(value, dict):
        return {k: resolve_paths(v, origin, where, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
        return [resolve_paths(v, origin, where, f"{key}.*") for v in value]
    if not any(_field_match(key, f) for f in PATH_FIELDS):
        return value
    name_ok = key in NAME_OR_PATH_FIELDS
    if isinstance(value, (list, tuple)):
        return [resolve_path(v, origin, f"{where}: {key}", name_ok) if isinstance(v, str) else v for v in value]
    return resolve_path(value, origin, f"{where}: {key}", name_ok) if isinstance(value, str) else value


def _field_match(key: str, pattern: str) -> bool:
    parts, want = key.split("."), pattern.split(".")
    return len(parts) == len(want) and all(w in ("*", p) for p, w in zip(parts, want))


def resolve_path(value: str, origin: pathlib.Path | None, where: str, name_ok: bool = False) -> str:
    """One path (or glob) by the rule above; `name_ok`: a bare word found nowhere is a name."""
    if "://" in value:
        return value
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        unset = re.findall(r"\$\{?(\w+)", expanded)
        raise ConfigError(f"{where}: {value!r} names ${unset[0] if unset else '...'}, which is not set; set it or "
                          "write the path out")
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    in_cwd = os.path.abspath(expanded)
    if origin is None:
        return value if name_ok and _NAME.fullmatch(value) and not _exists(in_cwd) else in_cwd
    beside = os.path.normpath(os.path.join(origin, expanded))
    if _exists(beside):
        return beside
    if _exists(in_cwd):
        _warn(f"{where}: {value!r} is not found beside the file (in {origin}); using {in_cwd} from the current "
              f"directory. Relative paths in a file are read from the file's directory: write "
              f"{os.path.relpath(in_cwd, origin)!r} there to run from anywhere")
        return in_cwd
    return value if name_ok and _NAME.fullmatch(value) else beside


def _exists(path: str) -> bool:
    return bool(glob.glob(path, recursive=True)) if glob.has_magic(path) else os.path.exists(path)


def _warn(message: str) -> None:
    if message not in _warned:  # a sweep resolves its base once per run
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)
