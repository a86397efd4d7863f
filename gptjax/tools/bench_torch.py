"""The PyTorch side of `gptjax bench --vs-torch`: the same architecture, batch and optimizer.

The model is nanoGPT's own model.py when a checkout is named (the reference our Shakespeare
numbers are compared with), otherwise the Hugging Face transformers class that represents the
config exactly (hf_config.config_to_hf refuses one it would change). AdamW decays every tensor of rank
>= 2, as nanoGPT's configure_optimizers does, with the config's learning rate, betas, epsilon,
weight decay and global-norm clipping. torch is needed only here (the `hf` extra).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import numpy as np

from gptjax.config import ConfigError, ModelConfig, TrainConfig


def nanogpt_obstacles(m: ModelConfig) -> list[str]:
    """Why nanoGPT's GPT cannot be this model (empty: it can)."""
    checks = [
        (m.position == "learned", f"position = {m.position!r} (nanoGPT: learned)"),
        (m.residual == "pre_ln", f"residual = {m.residual!r} (nanoGPT: pre_ln)"),
        (m.norm == "layernorm" and not m.embed_norm, "norm must be a LayerNorm, without embed_norm"),
        (m.activation == "gelu", f"activation = {m.activation!r} (nanoGPT: nn.GELU(), i.e. gelu)"),
        (m.tie_embeddings and not m.head_bias, "nanoGPT ties the head to the embedding, without a bias"),
        (m.resolved_d_ff == 4 * m.d_model, f"d_ff = {m.resolved_d_ff} (nanoGPT: 4 * d_model)"),
        (m.resolved_kv_heads == m.n_heads and m.resolved_head_dim * m.n_heads == m.d_model,
         "nanoGPT has multi-head attention with head_dim = d_model / n_heads"),
        ("local" not in m.layer_kinds, "nanoGPT has no local (banded) layers"),
        (m.attn_scale is None, "nanoGPT scales attention by 1/sqrt(head_dim)"),
        (len({m.qkv_bias, m.out_bias, m.mlp_bias, m.norm_bias}) == 1, "nanoGPT's bias flag sets every bias at once"),
    ]
    return [why for ok, why in checks if not ok]


def _load_nanogpt(directory: str):
    path = pathlib.Path(directory) / "model.py"
    if not path.is_file():
        raise ConfigError(f"--nanogpt {directory}: no model.py there (a nanoGPT checkout is expected)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TorchTrainer:
    """A PyTorch train step (forward, backward, clipping, AdamW) on one fixed batch."""

    def __init__(self, cfg: TrainConfig, *, nanogpt: str | None = None, threads: int | None = None):
        import torch

        o, m = cfg.optim, cfg.model
        if o.name != "adamw":
            raise ConfigError(f"--vs-torch compares AdamW steps; optim.name = {o.name!r}")
        self.threads = threads or os.cpu_count()
        torch.set_num_threads(self.threads)
        torch.manual_seed(cfg.seed)
        if nanogpt is not None:
            obstacles = nanogpt_obstacles(m)
            if obstacles:
                raise ConfigError(f"--nanogpt cannot build this model: {'; '.join(obstacles)}")
            nano = _load_nanogpt(nanogpt)
            self.model = nano.GPT(nano.GPTConfig(block_size=m.max_seq_len, vocab_size=m.vocab_size,
                                                 n_layer=m.n_layers, n_head=m.n_heads, n_embd=m.d_model,
                                                 dropout=0.0, bias=m.qkv_bias))
            self.implementation = f"nanoGPT model.py from {nanogpt}"
        else:
            self.model, self.implementation = _transformers_model(m)
        params = list(self.model.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
        self.clip = o.grad_clip
        rows = np.random.default_rng(cfg.seed).integers(0, m.vocab_size, (cfg.data.batch_size,
                                                                           cfg.resolved_seq_len + 1))
        rows = torch.from_numpy(rows.astype(np.int64))
        self.x, self.y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        self.nanogpt = nanogpt is not None
        self.model.train()

    def _loss(self):
        import torch.nn.functional as F

        if self.nanogpt:
            return self.model(self.x, self.y)[1]
        logits = self.model(input_ids=self.x).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))

    def step(self):
        import torch

        loss = self._loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return loss

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = self.step()
        loss.item()  # eager PyTorch is synchronous on CPU; this only makes the end explicit
        return time.perf_counter() - t0

    def describe(self) -> dict:
        return {"implementation": self.implementation, "threads": self.threads,
                "params": sum(p.numel() for p in self.model.parameters())}


def _transformers_model(m: ModelConfig):
    import transformers

    from gptjax.interop import hf_config

    try:
        hf_dict = hf_config.config_to_hf(m.replace(vocab_pad_multiple=1))
    except ConfigError as e:
        raise ConfigError(f"--vs-torch: transformers has no exact class for this model ({e}); for nanoGPT-style "
                          "models pass --nanogpt DIR (a nanoGPT checkout)") from e
    hf_dict = {k: v for k, v in hf_dict.items() if k not in ("architectures", "dtype", "torch_dtype")}
    config = transformers.AutoConfig.for_model(**hf_dict)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model, f"transformers {type(model).__name__} (sdpa attention)"
