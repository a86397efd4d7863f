"""LoRA adapters of a run directory in PEFT's format: adapter_config.json + adapter_model.safetensors,
which `peft.PeftModel.from_pretrained(base, DIR)` loads onto the base transformers model.

GPT-2 is the family PEFT users adapt most; its attention projections q, k, v are one fused Conv1D
(`c_attn`), so our three rank-r adapters become one adapter of rank 3r there (A stacked, B block-
diagonal: the same update exactly), with its own rank and alpha through PEFT's rank_pattern and
alpha_pattern. Other families are refused with the way out (export merged weights instead).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from gptjax.config import ConfigError, TrainConfig
from gptjax.interop import hf_config
from gptjax.store import tensor_files

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"

# Our target -> GPT-2 module under transformer.h.{i}; q, k and v share c_attn.
_GPT2_MODULES = {"attn.q": "attn.c_attn", "attn.k": "attn.c_attn", "attn.v": "attn.c_attn",
                 "attn.o": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
_QKV = ("attn.q", "attn.k", "attn.v")


def export_peft(cfg: TrainConfig, adapters: dict, path, *, overwrite: bool = False) -> pathlib.Path:
    """Write `adapters` (host arrays as lora.adapter_layout lays them out) of a run with `cfg`."""
    lcfg = cfg.finetune.lora
    model_type = hf_config.config_to_hf(cfg.model)["model_type"]
    if model_type != "gpt2":
        raise ConfigError(f"PEFT export is implemented for gpt2 models; this one exports as {model_type}. Export "
                          "the merged model instead: gptjax convert RUN_DIR DST --to hf --merge-lora")
    unsupported = [t for t in lcfg.targets if t not in _GPT2_MODULES]
    if unsupported:
        raise ConfigError(f"finetune.lora.targets {unsupported} have no GPT-2 module to export to")

    def get(target):
        group, name = target.split(".")
        a, b = (np.asarray(adapters[group][name][k], np.float32) for k in ("a", "b"))
        return a.reshape(a.shape[0], -1, a.shape[-1]), b.reshape(b.shape[0], b.shape[1], -1)  # [L,in,r], [L,r,out]

    tensors: dict[str, np.ndarray] = {}
    prefix = "base_model.model.transformer.h.{i}."
    qkv = [t for t in _QKV if t in lcfg.targets]
    for i in range(cfg.model.n_layers):
        for target in lcfg.targets:
            if target in _QKV:
                continue
            a, b = get(target)
            name = prefix.format(i=i) + _GPT2_MODULES[target]
            tensors[name + ".lora_A.weight"] = np.ascontiguousarray(a[i].T)  # [r, in]
            tensors[name + ".lora_B.weight"] = np.ascontiguousarray(b[i].T)  # [out, r]
        if qkv:
            d = cfg.model.d_model
            a_rows, b_full = [], np.zeros((3 * d, lcfg.rank * len(qkv)), np.float32)
            for j, target in enumerate(qkv):
                a, b = get(target)
                a_rows.append(a[i].T)
                block = _QKV.index(target)  # q | k | v column blocks of c_attn
                b_full[block * d:(block + 1) * d, j * lcfg.rank:(j + 1) * lcfg.rank] = b[i].T
            name = prefix.format(i=i) + "attn.c_attn"
            tensors[name + ".lora_A.weight"] = np.ascontiguousarray(np.concatenate(a_rows))
            tensors[name + ".lora_B.weight"] = b_full
    modules = sorted({_GPT2_MODULES[t] for t in lcfg.targets})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": cfg.init_from,
        "r": lcfg.rank, "lora_alpha": lcfg.alpha, "lora_dropout": lcfg.dropout, "bias": "none",
        "fan_in_fan_out": True,  # GPT-2's Conv1D stores [in, out]
        "target_modules": r".*\.h\.\d+\.(" + "|".join(m.replace(".", r"\.") for m in modules) + r")$",
        # rank 3r for the fused c_attn with 3x alpha: the same alpha / r scale as every other module.
        "rank_pattern": {"c_attn": lcfg.rank * len(qkv)} if qkv else {},
        "alpha_pattern": {"c_attn": lcfg.alpha * len(qkv)} if qkv else {},
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
    }
    with tensor_files.atomic_directory(path, overwrite=overwrite, last=(PEFT_CONFIG,)) as tmp:
        tensor_files.write_safetensors(tmp / PEFT_WEIGHTS, tensors)
        (tmp / PEFT_CONFIG).write_text(json.dumps(config, indent=1))
    return pathlib.Path(path)
