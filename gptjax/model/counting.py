"""Parameter counts and training FLOPs per token, read off the abstract model (nothing allocated).

Conventions (the trainer's MFU uses `flops_per_token` from here, so both agree):

- total: every parameter once. A tied embedding is one table; rows added by
  `vocab_pad_multiple` are not counted (Hugging Face's counts have none).
- non_embedding: total minus the token embedding table(s) — the input table and, when untied,
  the output head including its bias — and minus the learned position table. This is Kaplan et
  al. (2020)'s N and the "non-embedding" column of the Pythia paper (Pythia-70m: 18,915,328).
- flops_per_token: training FLOPs (forward + backward) per token at sequence length T,
      6·N_matmul + 12·n_layers·n_heads·head_dim·T
  as in PaLM (Chowdhery et al. 2022), appendix B, and nanoGPT's estimate_mfu. N_matmul is the
  parameters that take part in matmuls: total minus the position table (a lookup) and minus the
  input embedding when untied (also a lookup); a tied table is counted once, as the output
  projection. The second term is attention's QKᵀ and AV; locally banded layers are counted as
  dense, the same simplification those references make.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

from flax import nnx

from gptjax.config import ConfigError, ModelConfig
from gptjax.model.gpt import abstract_model
from gptjax.presets import PRESETS, get_preset


@dataclasses.dataclass(frozen=True)
class Counts:
    total: int
    non_embedding: int
    flops_per_token: int


@dataclasses.dataclass(frozen=True)
class _Groups:
    """Unpadded parameter counts split by role."""

    total: int
    vocab: int  # every parameter with a "vocab" axis: input table, untied head kernel and bias
    input_embedding: int
    position: int


@functools.lru_cache(maxsize=64)
def _groups(cfg: ModelConfig) -> _Groups:
    # Roles come from the logical axis names the model already carries ("vocab", "position"),
    # so a new parameter is classified without this file knowing its path.
    total = vocab = input_embedding = position = 0
    for path, variable in nnx.to_flat_state(nnx.state(abstract_model(cfg), nnx.Param)):
        axes = variable.get_metadata()["axes"]
        shape = variable.get_value().shape
        n = math.prod(cfg.vocab_size if axis == "vocab" else size for axis, size in zip(axes, shape))
        total += n
        if "vocab" in axes:
            vocab += n
        if "position" in axes:
            position += n
        if tuple(path) == ("embed", "table"):
            input_embedding = n
    return _Groups(total=total, vocab=vocab, input_embedding=input_embedding, position=position)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token at `seq_len` (default cfg.max_seq_len); see the module docstring."""
    t = cfg.max_seq_len if seq_len is None else seq_len
    if isinstance(t, bool) or not isinstance(t, int) or t <= 0:
        raise ConfigError(f"seq_len = {t!r} is invalid: must be a positive integer")
    g = _groups(cfg)
    n_matmul = g.total - g.position - (0 if cfg.tie_embeddings else g.input_embedding)
    return 6 * n_matmul + 12 * cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * t


def param_counts(cfg: ModelConfig, seq_len: int | None = None) -> Counts:
    """Total and non-embedding parameters, and training FLOPs per token at `seq_len`."""
    g = _groups(cfg)
    return Counts(total=g.total, non_embedding=g.total - g.vocab - g.position,
                  flops_per_token=flops_per_token(cfg, seq_len))


def format_table(names: Sequence[str] = ()) -> str:
    """One row per preset (all of them when `names` is empty), for `gptjax params`."""
    names = list(names) or list(PRESETS)
    header = ("preset", "n_ctx", "total", "non-embedding", "train FLOPs/token @ n_ctx")
    rows = [header]
    for name in names:
        cfg = get_preset(name)
        c = param_counts(cfg)
        rows.append((name, str(cfg.max_seq_len), f"{c.total:,}", f"{c.non_embedding:,}",
                     f"{c.flops_per_token:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        # Names left-aligned, numbers right-aligned so their digits line up.
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        return "  ".join(cells)

    return "\n".join(line(row) for row in rows)


__all__ = ["Counts", "flops_per_token", "format_table", "param_counts"]
