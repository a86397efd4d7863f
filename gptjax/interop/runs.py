"""Models and LoRA adapters from a run directory's newest verified checkpoint, opened read-only
(sample, eval, convert and from_pretrained read runs through here)."""

from __future__ import annotations

import jax
from flax import nnx

from gptjax.config import TrainConfig
from gptjax.finetune import lora
from gptjax.model.gpt import abstract_model
from gptjax.runtime import sharding
from gptjax.store.rundir import RunDir
from gptjax.store.tensor_files import CheckpointError
from gptjax.training import trainer, warm_start


def load_model(path, mesh=None):
    """(model, tokenizer, step) from a run directory's newest verified checkpoint, opened
    read-only; parameters only, placed as training would place them on `mesh` (default: one
    device)."""
    run_dir = RunDir(path, read_only=True)
    cfg = run_dir.read_config()
    if cfg.finetune.task is not None:
        raise CheckpointError(f"{run_dir} is a {cfg.finetune.task} fine-tuning run (gptjax finetune): its "
                              "checkpoints hold the model with three added tokens and a task head, not a "
                              f"language model; its scores are in {run_dir.file('eval.json')}")
    if mesh is None:
        mesh = sharding.one_device_mesh(cfg.mesh)
    model = abstract_model(cfg.model, trainer.kernels_for(cfg.model, mesh))
    graphdef, state = nnx.split(model)
    shapes = nnx.to_pure_dict(state)
    shardings = sharding.param_shardings(sharding.logical_axes(model), shapes, mesh)
    target = sharding.abstract(shapes, shardings)
    if cfg.finetune.lora is not None:
        target = _lora_target(cfg, model, shapes, mesh)
    params, meta = run_dir.restore_params(cfg, target)
    if cfg.finetune.lora is not None:  # adapters only: merge them into their base
        params = _merged(cfg, params, meta, mesh, shardings)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state), run_dir.read_tokenizer(), int(meta["step"])


def _lora_target(cfg: TrainConfig, model, shapes: dict, mesh) -> dict:
    adapter_shapes, adapter_axes = lora.adapter_layout(cfg.finetune.lora, shapes, sharding.logical_axes(model))
    adapter_sh = sharding.param_shardings(adapter_axes, adapter_shapes, mesh)
    return sharding.abstract(adapter_shapes, adapter_sh)


def _merged(cfg: TrainConfig, adapters: dict, meta: dict, mesh, shardings: dict) -> dict:
    base = warm_start.fingerprint(cfg.init_from)
    if meta.get("base_fingerprint") != base:
        raise CheckpointError(f"the LoRA adapters were trained on a base with fingerprint "
                              f"{meta.get('base_fingerprint')}, but init_from = {cfg.init_from!r} now has "
                              f"{base}; restore the original base there")
    frozen = warm_start.load_params(cfg, mesh, shardings)
    return jax.jit(lambda f, a: lora.merge(f, a, cfg.finetune.lora), out_shardings=shardings)(frozen, adapters)


def load_adapters(path) -> tuple[TrainConfig, dict, int]:
    """(config, LoRA adapters as host arrays, step) of a LoRA run's newest verified checkpoint."""
    run_dir = RunDir(path, read_only=True)
    cfg = run_dir.read_config()
    if cfg.finetune.lora is None:
        raise CheckpointError(f"{run_dir}: not a LoRA run (finetune.lora is unset), so it has no adapters "
                              "to export; convert it without --peft")
    mesh = sharding.one_device_mesh(cfg.mesh)
    model = abstract_model(cfg.model)
    target = _lora_target(cfg, model, nnx.to_pure_dict(nnx.state(model)), mesh)
    adapters, meta = run_dir.restore_params(cfg, target)
    return cfg, jax.device_get(adapters), int(meta["step"])
