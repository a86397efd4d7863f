"""The published shapes: GPT-1, GPT-2, GPT-3 (paper Table 2.1), GPT-Neo, GPT-J, GPT-NeoX-20B, Pythia.

PRESETS is plain data built once at import; nothing registers itself. Each entry matches the
Hugging Face architecture of the same family parameter for parameter (tests/test_presets.py
counts both). Presets fix architecture and shape only: dropout stays at ModelConfig's 0.0
because it is a training choice (GPT-1/2 trained with 0.1; nanoGPT pretrains with 0.0), to be
set by the experiment. vocab_pad_multiple is 1 throughout so the vocabulary is exactly the
published one; an experiment may pad it for speed (counting.py never counts padding).
"""

from __future__ import annotations

import difflib
from typing import Any

from gptjax.config import ConfigError, ModelConfig

GPT2_VOCAB = 50257
# GPT-3's paper gives no band width for its "locally banded sparse" layers. ASSUMPTION: 256,
# GPT-Neo's window (GPT-Neo set out to replicate GPT-3). Banded layers add no parameters, so
# this choice changes no count, only what a local layer can see.
GPT3_LOCAL_WINDOW = 256


def _gpt1() -> ModelConfig:
    # Radford et al. 2018 / HF openai-gpt. HF's afn "gelu" maps to gelu_new (the tanh form),
    # as did the original finetune-transformer-lm code, hence gelu_tanh rather than erf "gelu".
    return ModelConfig(vocab_size=40478, max_seq_len=512, d_model=768, n_layers=12, n_heads=12,
                       residual="post_ln", activation="gelu_tanh", tie_embeddings=True)


def _gpt2(n_layers: int, d_model: int, n_heads: int, *, max_seq_len: int = 1024, **kw: Any) -> ModelConfig:
    # Pre-LN, learned positions, tied head, gelu_new, biases everywhere (HF GPT2LMHeadModel).
    return ModelConfig(vocab_size=GPT2_VOCAB, max_seq_len=max_seq_len, d_model=d_model,
                       n_layers=n_layers, n_heads=n_heads, residual="pre_ln", activation="gelu_tanh",
                       tie_embeddings=True, **kw)


def _gpt3(n_layers: int, d_model: int, n_heads: int) -> ModelConfig:
    # Brown et al. 2020, §2.1: "the same model and architecture as GPT-2 ... except that we use
    # alternating dense and locally banded sparse attention patterns", n_ctx 2048, d_ff = 4 d_model.
    return _gpt2(n_layers, d_model, n_heads, max_seq_len=2048,
                 attention_pattern=("global", "local"), local_window=GPT3_LOCAL_WINDOW)


def _gpt_neo(n_layers: int, d_model: int, n_heads: int) -> ModelConfig:
    # HF GPTNeo: unscaled attention scores, q/k/v without bias but out_proj with one.
    return ModelConfig(vocab_size=GPT2_VOCAB, max_seq_len=2048, d_model=d_model, n_layers=n_layers,
                       n_heads=n_heads, residual="pre_ln", activation="gelu_tanh", qkv_bias=False,
                       out_bias=True, tie_embeddings=True, attention_pattern=("global", "local"),
                       local_window=256, attn_scale=1.0)


def _gpt_j_6b() -> ModelConfig:
    # Wang & Komatsuzaki 2021 / HF GPTJ: one LayerNorm feeding attention and MLP in parallel,
    # interleaved rotary on the first 64 of 256 head dims, no attention biases, untied head with bias.
    return ModelConfig(vocab_size=50400, max_seq_len=2048, d_model=4096, n_layers=28, n_heads=16,
                       position="rotary", rotary_dim=64, rotary_layout="gptj",
                       residual="parallel_one_ln", activation="gelu_tanh", qkv_bias=False,
                       out_bias=False, tie_embeddings=False, head_bias=True)


def _neox(n_layers: int, d_model: int, n_heads: int, vocab_size: int) -> ModelConfig:
    # HF GPTNeoX (GPT-NeoX-20B and Pythia): rotary_pct 0.25 in the half-split layout, parallel
    # residual with two LayerNorms, exact (erf) gelu, biases on every linear, untied head without bias.
    return ModelConfig(vocab_size=vocab_size, max_seq_len=2048, d_model=d_model, n_layers=n_layers,
                       n_heads=n_heads, position="rotary", rotary_pct=0.25, rotary_layout="neox",
                       residual="parallel_two_ln", activation="gelu", tie_embeddings=False,
                       head_bias=False)


# Pythia's vocabulary is the NeoX tokenizer's 50277 entries rounded up to a multiple of
# 128 × the model-parallel degree used in training (EleutherAI/pythia#68), so it differs by
# size: 50304 up to 2.8b, 50432 for 6.9b, 50688 for 12b, as in EleutherAI/pythia-*/config.json.
# Those rows are real parameters of the released weights, so they are vocab_size here, not padding.
PYTHIA_SHAPES = {  # name: (n_layers, d_model, n_heads, vocab_size); Biderman et al. 2023, Table 1
    "pythia-70m": (6, 512, 8, 50304),
    "pythia-160m": (12, 768, 12, 50304),
    "pythia-410m": (24, 1024, 16, 50304),
    "pythia-1b": (16, 2048, 8, 50304),
    "pythia-1.4b": (24, 2048, 16, 50304),
    "pythia-2.8b": (32, 2560, 32, 50304),
    "pythia-6.9b": (32, 4096, 32, 50432),
    "pythia-12b": (36, 5120, 40, 50688),
}

PRESETS: dict[str, ModelConfig] = {
    "gpt1": _gpt1(),
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    # GPT-3 paper, Table 2.1 (n_layers, d_model, n_heads; d_head = d_model / n_heads).
    "gpt3-125m": _gpt3(12, 768, 12),
    "gpt3-350m": _gpt3(24, 1024, 16),
    "gpt3-760m": _gpt3(24, 1536, 16),
    # Table 2.1 lists GPT-3 XL as d_model 2048 with 24 heads of d_head 128, which cannot hold
    # (24 × 128 = 3072). We keep d_model 2048 and d_head 128, so 16 heads.
    "gpt3-1.3b": _gpt3(24, 2048, 16),
    "gpt3-2.7b": _gpt3(32, 2560, 32),
    "gpt3-6.7b": _gpt3(32, 4096, 32),
    # Table 2.1 lists 13B as d_model 5140 with 40 heads of 128; 40 × 128 = 5120, and 5140 is not
    # divisible by 40, so 5140 is taken as a typo for 5120.
    "gpt3-13b": _gpt3(40, 5120, 40),
    "gpt3-175b": _gpt3(96, 12288, 96),
    "gpt-neo-125m": _gpt_neo(12, 768, 12),
    "gpt-neo-1.3b": _gpt_neo(24, 2048, 16),
    "gpt-neo-2.7b": _gpt_neo(32, 2560, 20),
    "gpt-j-6b": _gpt_j_6b(),
    "gpt-neox-20b": _neox(44, 6144, 64, 50432),
    **{name: _neox(*shape) for name, shape in PYTHIA_SHAPES.items()},
}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; an unknown name raises ConfigError listing the closest names."""
    try:
        return PRESETS[name]
    except KeyError:
        near = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else f"known presets: {', '.join(PRESETS)}"
        raise ConfigError(f"unknown preset {name!r}; {hint}") from None


__all__ = ["PRESETS", "get_preset"]
