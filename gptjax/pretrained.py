"""Pretrained model directories: our native format (gptjax_config.json + Orbax parameters), Hugging
Face directories, and conversion between the two.

`from_pretrained` dispatches on a marker file, in the order of LOADERS; run directories join that
table with the marker `checkpoints`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp
from flax import nnx

from gptjax import checkpoint_io, hf, storage
from gptjax.checkpoint_io import CheckpointError
from gptjax.config import EXECUTION_FIELDS, ConfigError, ModelConfig, from_dict
from gptjax.model import GPT, abstract_model

NATIVE_CONFIG = "gptjax_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.json"  # Hugging Face tokenizers format
FORMAT_VERSION = 1


def save_pretrained(model: GPT, path: str | pathlib.Path, *, overwrite: bool = False) -> pathlib.Path:
    """Write gptjax_config.json, the parameters (Orbax) and the model's tokenizer, if it has one
    (as a Hugging Face tokenizer.json), into `path`, which appears whole or not at all."""
    from gptjax.tokenizer import hf_tokenizer_json

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tokenizer = getattr(model, "tokenizer", None)
    extra = {} if tokenizer is None else {"eot_id": tokenizer.eot_id}
    with checkpoint_io.atomic_directory(path, overwrite=overwrite, last=(NATIVE_CONFIG,)) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, params)
        checkpointer.wait_until_finished()  # saves are asynchronous; the rename must follow the commit
        checkpointer.close()
        if tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_text(hf_tokenizer_json(tokenizer))
        checkpoint_io.write_json(tmp / NATIVE_CONFIG, {"format_version": FORMAT_VERSION,
                                                       "model": model.cfg.to_dict(), **extra})
    return path


def load_native(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """A GPT from a directory written by save_pretrained; `overrides` may set EXECUTION_FIELDS."""
    directory = pathlib.Path(path)
    cfg = hf.with_overrides(native_config(directory), overrides, EXECUTION_FIELDS)
    checkpoint_io.refuse_links(directory)
    graphdef, state = nnx.split(abstract_model(cfg))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(state))
    checkpointer = ocp.StandardCheckpointer()
    restored = checkpointer.restore((directory / PARAMS_DIR).absolute(), target)
    checkpointer.close()
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def native_config(directory: pathlib.Path) -> ModelConfig:
    data = checkpoint_io.read_json(directory, NATIVE_CONFIG)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{directory / NATIVE_CONFIG}: format_version = {version!r}; this gptjax "
                              f"reads version {FORMAT_VERSION}")
    return from_dict(ModelConfig, data["model"])


def load_run(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """The model of a training run directory, from its latest verified checkpoint (read-only)."""
    from gptjax import rundir

    if overrides:
        raise ValueError(f"run directories take no overrides, got {sorted(overrides)}")
    model, tokenizer, _ = rundir.load_model(path)
    model.tokenizer = tokenizer
    return model


def directory_tokenizer(directory: pathlib.Path):
    """The directory's Hugging Face tokenizer.json, if it has one, with the checkpoint's end-of-text
    id (config.json's eos_token_id, or the gptjax config's record of it)."""
    from gptjax.tokenizer import HFTokenizer

    if not (directory / TOKENIZER_FILE).is_file():
        return None
    if (directory / hf.CONFIG_FILE).is_file():
        eos = checkpoint_io.read_json(directory, hf.CONFIG_FILE).get("eos_token_id")
    else:
        eos = checkpoint_io.read_json(directory, NATIVE_CONFIG).get("eot_id")
    return HFTokenizer.from_directory(directory, eos if isinstance(eos, int) else None)


# Marker file -> loader, tried in order.
LOADERS: list[tuple[str, Callable[..., GPT]]] = [
    (NATIVE_CONFIG, load_native),
    (hf.CONFIG_FILE, hf.load_hf),
    ("checkpoints", load_run),  # a run directory written by `gptjax train`
]


def from_pretrained(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """Load a native or Hugging Face directory, or a run directory, whichever `path` is."""
    if storage.is_remote(path):
        if storage.exists(storage.as_path(path) / "checkpoints"):
            return load_run(path, **overrides)
        raise CheckpointError(f"{path}: from object storage only run directories are read; copy a Hugging Face "
                              "or gptjax directory to a local disk first (gcloud storage cp -r, aws s3 cp --recursive)")
    directory = pathlib.Path(path)
    for marker, loader in LOADERS:
        if (directory / marker).exists() or (directory / marker).is_symlink():
            model = loader(directory, **overrides)
            if loader is not load_run:
                model.tokenizer = directory_tokenizer(directory)  # generate() encodes text prompts with it
            return model
    looked_for = " or ".join(marker for marker, _ in LOADERS)
    raise CheckpointError(f"{directory} is not a pretrained model directory: it holds no {looked_for}"
                          + ("" if directory.is_dir() else " (it is not a directory)"))


def convert(src: str | pathlib.Path, dst: str | pathlib.Path, to: Literal["hf", "gptjax"], *,
            model_type: str | None = None, overwrite: bool = False, merge_lora: bool = False,
            peft: bool = False) -> pathlib.Path:
    """Load `src` (either format, or a run directory) and write it to `dst` as `to`; `model_type`
    picks the HF family (default: the first that represents the model exactly). A LoRA run is
    always written with its adapters merged into the base (`merge_lora` says so explicitly);
    `peft` writes the adapters alone in PEFT's format instead."""
    if to not in ("hf", "gptjax"):
        raise ValueError(f"convert: to = {to!r}; accepted: 'hf', 'gptjax'")
    if to == "gptjax" and model_type is not None:
        raise ValueError(f"convert: model_type = {model_type!r} only applies when to = 'hf'")
    if peft:
        if merge_lora or to != "hf":
            raise ConfigError("convert: --peft writes the adapters alone, for transformers: use it with --to hf "
                             "and without --merge-lora")
        from gptjax import lora_export, rundir

        cfg, adapters, _ = rundir.load_adapters(src)
        return lora_export.export_peft(cfg, adapters, dst, overwrite=overwrite)
    if merge_lora:
        from gptjax import rundir

        cfg = rundir.RunDir(src, read_only=True).read_config() if storage.exists(storage.as_path(src) / "checkpoints") \
            else None
        if cfg is None or cfg.finetune.lora is None:
            raise ConfigError(f"convert: --merge-lora needs a LoRA run directory; {src} is not one")
    model = from_pretrained(src)
    if to == "hf":
        return hf.export_hf(model, dst, model_type=model_type, overwrite=overwrite)
    return save_pretrained(model, dst, overwrite=overwrite)
