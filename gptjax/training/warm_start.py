"""Starting a training run from a pretrained checkpoint: `init_from: PATH` names a Hugging Face
directory, a gptjax directory (save_pretrained) or a training run directory.

The model config comes from the checkpoint. A training config may set only the model fields that
leave every parameter's shape and meaning alone (SHAPE_FREE_FIELDS); anything else is refused
before anything is read or compiled. Weights go straight into the trainer's shardings one
parameter at a time and each device receives only its own shard, so no device ever holds a full
copy of the model: a model larger than one device's memory fine-tunes on a mesh.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from gptjax.config import EXECUTION_FIELDS, ConfigError, ModelConfig, TrainConfig
from gptjax.data import tokenizer as tok_lib
from gptjax.data.loader import DataError
from gptjax.interop import hf, hf_config, native
from gptjax.model.gpt import abstract_model
from gptjax.runtime import sharding
from gptjax.store import paths
from gptjax.store.tensor_files import CheckpointError

# Execution choices, the parameter dtype (weights are cast on load) and the vocabulary padding
# (rows are added or dropped; padded rows are masked, so the function is unchanged).
SHAPE_FREE_FIELDS = EXECUTION_FIELDS + ("param_dtype", "vocab_pad_multiple")

Kind = Literal["hf", "gptjax", "run"]


def source_kind(path: str) -> Kind:
    """Which kind of directory `path` is; a clear error when it is none of them."""
    if paths.is_remote(path):
        if paths.exists(paths.as_path(path) / "checkpoints"):
            return "run"
        raise CheckpointError(f"init_from = {path!r}: from object storage only run directories are read; copy a "
                              "Hugging Face or gptjax directory to a local disk first")
    directory = pathlib.Path(path)
    for marker, kind in ((native.NATIVE_CONFIG, "gptjax"), (hf_config.CONFIG_FILE, "hf"), ("checkpoints", "run")):
        if (directory / marker).exists():
            return kind
    raise CheckpointError(f"init_from = {path!r} is not a Hugging Face directory (config.json + safetensors), a "
                          f"gptjax directory ({native.NATIVE_CONFIG}) or a run directory (checkpoints/)"
                          + ("" if directory.is_dir() else ": no such directory"))


def model_config(path: str) -> ModelConfig:
    """The model the checkpoint at `path` holds (its config only: no weights are read)."""
    kind = source_kind(path)
    if kind == "hf":
        return hf.model_config(path)
    if kind == "gptjax":
        return native.native_config(pathlib.Path(path))
    from gptjax.store.rundir import RunDir

    return RunDir(path, read_only=True).read_config().model


def source_tokenizer(path: str) -> tok_lib.Tokenizer | None:
    """The tokenizer stored with the checkpoint, or None when it has none."""
    kind = source_kind(path)
    if kind == "run":
        from gptjax.store.rundir import RunDir

        return RunDir(path, read_only=True).read_tokenizer()
    return native.directory_tokenizer(pathlib.Path(path))


def checkpoint_tokenizer(cfg: TrainConfig) -> tok_lib.Tokenizer | None:
    """init_from's own tokenizer where data.tokenizer = 'init_from' (None otherwise), for
    loader.load_tokens and loader.make_tokenizer."""
    if cfg.data.tokenizer != "init_from" or cfg.init_from is None:
        return None
    tokenizer = source_tokenizer(cfg.init_from)
    if tokenizer is None:
        raise DataError(f"init_from = {cfg.init_from!r} stores no tokenizer (no tokenizer.json); set data.tokenizer "
                        "to the one it was trained with (gpt2 for GPT-2's BPE, or hf with data.tokenizer_path)")
    return tokenizer


def resolve(data: dict[str, Any]) -> dict[str, Any]:
    """A raw training config (YAML data) with its model section taken from init_from: the
    checkpoint's config, with the shape-free fields the user set. By default the run uses the
    checkpoint's tokenizer."""
    path = data["init_from"]
    if not isinstance(path, str):
        raise ConfigError(f"init_from = {path!r} is invalid: give the path of a Hugging Face, gptjax or run directory")
    source = model_config(path).to_dict()
    given = data.get("model") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"model: expected a mapping of fields, got {given!r}")
    _refuse_shape_changes(path, source, given)
    data = {**data, "model": {**source, **given}}
    section = dict(data.get("data") or {})
    section.setdefault("tokenizer", "init_from")
    return {**data, "data": section}


def check(cfg: TrainConfig) -> None:
    """For configs built in code: the model must be the checkpoint's up to SHAPE_FREE_FIELDS."""
    _refuse_shape_changes(cfg.init_from, model_config(cfg.init_from).to_dict(), cfg.model.to_dict())


def _refuse_shape_changes(path: str, source: dict[str, Any], given: dict[str, Any]) -> None:
    changed = [(k, v, source[k]) for k, v in given.items()
               if k in source and k not in SHAPE_FREE_FIELDS and _norm(v) != _norm(source[k])]
    if changed:
        shown = "; ".join(f"model.{k} = {v!r} (the checkpoint has {s!r})" for k, v, s in changed)
        raise ConfigError(f"init_from = {path!r} sets the model, and {shown} would change what its weights mean; "
                          f"only {', '.join(SHAPE_FREE_FIELDS)} may be set. Remove the others, or train from "
                          "scratch without init_from")


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_params(cfg: TrainConfig, mesh: jax.sharding.Mesh, shardings: dict) -> dict:
    """init_from's weights as cfg.model's parameters, each placed in its sharding on `mesh`."""
    kind = source_kind(cfg.init_from)
    if kind == "hf":
        flat = traverse_util.flatten_dict(shardings, sep=".")
        return hf.read_params(pathlib.Path(cfg.init_from), cfg.model, lambda p, a: _put(a, flat[p]))
    source = model_config(cfg.init_from).replace(param_dtype=cfg.model.param_dtype)
    source_sh = shardings if source.padded_vocab == cfg.model.padded_vocab else _param_shardings(source, mesh)
    target = _abstract(source, source_sh)
    if kind == "gptjax":
        params = native.restore_params(pathlib.Path(cfg.init_from), target)
    else:
        params = _restore_run(cfg.init_from, target)
    if source.padded_vocab == cfg.model.padded_vocab:
        return params
    return _repad(params, source, cfg.model, shardings)


def fingerprint(path: str) -> str:
    """sha256 naming the exact weights at `path` (what LoRA checkpoints record of their base): of
    the weight and config files of a Hugging Face or gptjax directory, of the newest checkpoint's
    manifest (itself the files' sha256s) of a run directory."""
    kind = source_kind(path)
    digest = hashlib.sha256(kind.encode())
    if kind == "run":
        from gptjax.store.manifest import MANIFEST
        from gptjax.store.rundir import CHECKPOINTS, RunDir

        rd = RunDir(path, read_only=True)
        steps = [int(p.name) for p in paths.as_path(rd.file(CHECKPOINTS)).iterdir() if p.name.isdigit()]
        if not steps:
            raise CheckpointError(f"init_from = {path!r}: the run directory holds no checkpoint yet")
        manifest = paths.as_path(rd.file(CHECKPOINTS)) / str(max(steps)) / MANIFEST
        digest.update(f"{max(steps)}:".encode() + manifest.read_bytes())
        return digest.hexdigest()
    root = pathlib.Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if kind == "hf" and not (rel.endswith(".safetensors") or rel.endswith(".json")):
            continue
        digest.update(rel.encode() + b"\0" + paths.sha256(file).encode())
    return digest.hexdigest()


def _put(host: np.ndarray, sh: jax.sharding.Sharding) -> jax.Array:
    # Each device is handed only the slice it holds: never a full copy on one device.
    return jax.make_array_from_callback(host.shape, sh, lambda index: host[index])


def _param_shardings(model_cfg: ModelConfig, mesh) -> dict:
    model = abstract_model(model_cfg)
    shapes = nnx.to_pure_dict(nnx.state(model))
    return sharding.param_shardings(sharding.logical_axes(model), shapes, mesh)


def _abstract(model_cfg: ModelConfig, shardings: dict) -> dict:
    shapes = nnx.to_pure_dict(nnx.state(abstract_model(model_cfg)))
    return sharding.abstract(shapes, shardings)


def _restore_run(path: str, target: dict) -> dict:
    from gptjax.store.rundir import RunDir

    rd = RunDir(path, read_only=True)
    cfg = rd.read_config()
    if cfg.finetune.lora is not None:
        raise CheckpointError(f"init_from = {path!r} is a LoRA run (its checkpoints hold adapters only); write it "
                              f"merged first: gptjax convert {path} MERGED --to gptjax --merge-lora")
    return rd.restore_params(cfg, target, what=f"init_from = {path!r}: ")[0]


def _repad(params: dict, source: ModelConfig, target: ModelConfig, shardings: dict) -> dict:
    """Vocabulary rows cut to the real vocabulary, then zero-padded to the target's multiple."""
    axes = traverse_util.flatten_dict(sharding.logical_axes(abstract_model(source)), sep=".")

    def repad(flat):
        out = {}
        for path, x in flat.items():
            if "vocab" in axes[path]:
                axis = axes[path].index("vocab")
                x = jax.lax.slice_in_dim(x, 0, target.vocab_size, axis=axis)
                widths = [(0, 0)] * x.ndim
                widths[axis] = (0, target.padded_vocab - target.vocab_size)
                x = jnp.pad(x, widths)
            out[path] = x
        return out

    flat_sh = traverse_util.flatten_dict(shardings, sep=".")
    flat = jax.jit(repad, out_shardings=flat_sh)(traverse_util.flatten_dict(params, sep="."))
    return traverse_util.unflatten_dict(flat, sep=".")


__all__ = ["SHAPE_FREE_FIELDS", "check", "fingerprint", "load_params", "model_config", "resolve", "source_kind",
           "source_tokenizer"]
