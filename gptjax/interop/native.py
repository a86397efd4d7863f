"""Our native directory format: gptjax_config.json, the parameters (Orbax) and, when the model has
one, a Hugging Face tokenizer.json."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from gptjax.config import EXECUTION_FIELDS, ModelConfig, from_dict
from gptjax.interop import hf_config
from gptjax.model import kernels
from gptjax.model.gpt import GPT, abstract_model
from gptjax.store import manifest, tensor_files
from gptjax.store.tensor_files import CheckpointError

NATIVE_CONFIG = "gptjax_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.json"  # Hugging Face tokenizers format
FORMAT_VERSION = 1


def save_pretrained(model: GPT, path: str | pathlib.Path, *, overwrite: bool = False) -> pathlib.Path:
    """Write gptjax_config.json, the parameters (Orbax) and the model's tokenizer, if it has one
    (as a Hugging Face tokenizer.json), into `path`, which appears whole or not at all."""
    from gptjax.data.tokenizer import hf_tokenizer_json

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tokenizer = getattr(model, "tokenizer", None)
    extra = {} if tokenizer is None else {"eot_id": tokenizer.eot_id}
    with tensor_files.atomic_directory(path, overwrite=overwrite, last=(NATIVE_CONFIG,)) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, params)
        checkpointer.wait_until_finished()  # saves are asynchronous; the rename must follow the commit
        checkpointer.close()
        manifest.write_manifest(tmp / PARAMS_DIR)  # sha256 of every file: a damaged one is named on load
        if tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_text(hf_tokenizer_json(tokenizer))
        tensor_files.write_json(tmp / NATIVE_CONFIG, {"format_version": FORMAT_VERSION,
                                                       "model": model.cfg.to_dict(), **extra})
    return path


def load_native(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """A GPT from a directory written by save_pretrained; `overrides` may set EXECUTION_FIELDS."""
    directory = pathlib.Path(path)
    cfg = hf_config.with_overrides(native_config(directory), overrides, EXECUTION_FIELDS)
    tensor_files.refuse_links(directory)
    graphdef, state = nnx.split(abstract_model(cfg, kernels.for_device(cfg, jax.local_devices()[0])))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, restore_params(directory, target))
    return nnx.merge(graphdef, state)


def restore_params(directory: pathlib.Path, target: dict) -> dict:
    """The directory's parameters restored into `target` (shapes, dtypes, shardings). Its files
    are checked against the manifest save_pretrained wrote first, so a damaged or truncated one
    is named instead of failing inside Orbax; directories from before the manifest are read as
    they are, Orbax's errors reported in one line."""
    params = directory / PARAMS_DIR
    if (params / manifest.MANIFEST).exists():
        reason = manifest.verify(params)
        if reason is not None:
            raise CheckpointError(f"{directory} is damaged: {reason}; write it again (gptjax convert or "
                                  "save_pretrained from its source)")
    checkpointer = ocp.StandardCheckpointer()
    try:
        return checkpointer.restore(params.absolute(), target)
    except Exception as e:  # Orbax wraps TensorStore's read errors in a bare Exception
        if "RESOURCE_EXHAUSTED" in str(e):  # out of memory: not the directory's fault
            raise
        said = str(e.__cause__ or e).strip()
        first = said.splitlines()[0] if said else type(e).__name__
        raise CheckpointError(f"{params} cannot be restored ({first}): a file is damaged or truncated, or the "
                              "directory was not written by save_pretrained") from None
    finally:
        checkpointer.close()


def native_config(directory: pathlib.Path) -> ModelConfig:
    data = tensor_files.read_json(directory, NATIVE_CONFIG)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{directory / NATIVE_CONFIG}: format_version = {version!r}; this gptjax "
                              f"reads version {FORMAT_VERSION}")
    return from_dict(ModelConfig, data["model"])


def directory_tokenizer(directory: pathlib.Path):
    """The directory's Hugging Face tokenizer.json, if it has one, with the checkpoint's end-of-text
    id (config.json's eos_token_id, or the gptjax config's record of it)."""
    from gptjax.data.tokenizer import HFTokenizer

    if not (directory / TOKENIZER_FILE).is_file():
        return None
    if (directory / hf_config.CONFIG_FILE).is_file():
        eos = tensor_files.read_json(directory, hf_config.CONFIG_FILE).get("eos_token_id")
    else:
        eos = tensor_files.read_json(directory, NATIVE_CONFIG).get("eot_id")
    return HFTokenizer.from_directory(directory, eos if isinstance(eos, int) else None)
