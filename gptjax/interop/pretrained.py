"""Pretrained model directories: our native format (native.py), Hugging Face directories (hf.py)
and run directories (runs.py), and conversion between them.

`from_pretrained` dispatches on a marker file, in the order of LOADERS; run directories join that
table with the marker `checkpoints`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any, Literal

from gptjax.config import ConfigError
from gptjax.interop import hf, hf_config
from gptjax.interop.native import NATIVE_CONFIG, directory_tokenizer, load_native, save_pretrained
from gptjax.model.gpt import GPT
from gptjax.store import paths
from gptjax.store.tensor_files import CheckpointError


def load_run(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """The model of a training run directory, from its latest verified checkpoint (read-only)."""
    from gptjax.interop import runs

    if overrides:
        raise ValueError(f"run directories take no overrides, got {sorted(overrides)}")
    model, tokenizer, _ = runs.load_model(path)
    model.tokenizer = tokenizer
    return model


# Marker file -> loader, tried in order.
LOADERS: list[tuple[str, Callable[..., GPT]]] = [
    (NATIVE_CONFIG, load_native),
    (hf_config.CONFIG_FILE, hf.load_hf),
    ("checkpoints", load_run),  # a run directory written by `gptjax train`
]


def from_pretrained(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """Load a native or Hugging Face directory, or a run directory, whichever `path` is."""
    if paths.is_remote(path):
        if paths.exists(paths.as_path(path) / "checkpoints"):
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
        from gptjax.finetune import peft_export
        from gptjax.interop import runs

        cfg, adapters, _ = runs.load_adapters(src)
        return peft_export.export_peft(cfg, adapters, dst, overwrite=overwrite)
    if merge_lora:
        from gptjax.store import rundir

        cfg = rundir.RunDir(src, read_only=True).read_config() if paths.exists(paths.as_path(src) / "checkpoints") \
            else None
        if cfg is None or cfg.finetune.lora is None:
            raise ConfigError(f"convert: --merge-lora needs a LoRA run directory; {src} is not one")
    model = from_pretrained(src)
    if to == "hf":
        return hf.export_hf(model, dst, model_type=model_type, overwrite=overwrite)
    return save_pretrained(model, dst, overwrite=overwrite)
