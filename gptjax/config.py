"""Frozen, typed model configuration: every option is a field, every default visible here.

Variants are `Literal` fields; they are dispatched in exactly one place each (layers.py,
positions.py, attention.py, gpt.py). Derived values are properties, never stored.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from typing import Any, Literal

import draccus

Position = Literal["learned", "rotary", "alibi", "none"]
RotaryLayout = Literal["neox", "gptj"]
# post_ln: GPT-1. pre_ln: GPT-2/3, Neo, sequential NeoX. parallel_one_ln: GPT-J (attention
# and MLP read the same normalised input). parallel_two_ln: NeoX/Pythia (one LN each).
Residual = Literal["post_ln", "pre_ln", "parallel_one_ln", "parallel_two_ln"]
Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu_tanh", "gelu", "relu", "swiglu"]
AttentionKind = Literal["global", "local"]
Remat = Literal["none", "full", "save_dots"]
Parametrization = Literal["standard", "mup"]
DType = Literal["float32", "bfloat16"]
AttentionImpl = Literal["auto", "xla", "cudnn", "pallas", "einsum"]


# Fields that choose how a model runs (kernels, compute precision, training-time dropout), not
# which function its weights define: a loader may set them, a resumed run may change them, and
# export ignores them. The kernel fields compute the same function by another program, so they do
# not even change what a run trains (see UNTRAINED_FIELDS); precision and dropout do.
KERNEL_FIELDS = ("scan_layers", "remat", "attention_impl")
EXECUTION_FIELDS = (*KERNEL_FIELDS, "compute_dtype", "embed_dropout", "attn_dropout", "resid_dropout")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names field, value and what is accepted."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and architecture of one GPT-family model."""

    # Sizes.
    vocab_size: int = 50257
    vocab_pad_multiple: int = 1  # embedding rows rounded up to this (50257 -> 50304 with 64)
    max_seq_len: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: multi-head; fewer: grouped-query; 1: multi-query
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: 4 * d_model

    # Positions.
    position: Position = "learned"
    rotary_pct: float = 1.0  # fraction of head_dim rotated (NeoX's rotary_pct)
    rotary_dim: int | None = None  # exact rotated width (GPT-J's rotary_dim); overrides rotary_pct
    rotary_layout: RotaryLayout = "neox"
    rotary_base: float = 10000.0

    # Block.
    residual: Residual = "pre_ln"
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    embed_norm: bool = False  # LayerNorm right after the embedding (BLOOM)
    activation: Activation = "gelu_tanh"
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True
    head_bias: bool = False
    tie_embeddings: bool = True

    # Attention pattern: cycled over layers, e.g. ("global", "local") alternates like GPT-Neo.
    attention_pattern: tuple[AttentionKind, ...] = ("global",)
    local_window: int = 256  # a local layer attends to the previous `local_window` tokens
    attn_scale: float | None = None  # None: 1/sqrt(head_dim). GPT-Neo uses 1.0 (unscaled).

    # Regularisation and initialisation.
    embed_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    init_std: float = 0.02
    scale_residual_init: bool = True  # GPT-2: output projections get std / sqrt(2 * n_layers)
    # mup: the Maximal Update Parametrization (Yang et al. 2022, Tensor Programs V), relative to a
    # base model of width mup_base_width, as the `mup` package does it for Adam: hidden matrices
    # initialised with std / sqrt(m) and trained with lr / m (m = d_model / mup_base_width), query
    # weights zero, attention scaled 1/d (anchored to 1/sqrt(d) at the base head size), logits
    # multiplied by 1/m (MuReadout / MuSharedReadout). At m = 1 only the query init differs.
    # mup_base_head_dim is the base model's head size: None when widths grow by adding heads of a
    # fixed size (then 1/d and 1/sqrt(d) differ by a constant and the scale stays 1/sqrt(d)).
    parametrization: Parametrization = "standard"
    mup_base_width: int = 128
    mup_base_head_dim: int | None = None

    # Execution.
    scan_layers: bool = True
    remat: Remat = "none"
    param_dtype: DType = "float32"
    compute_dtype: DType = "float32"
    # auto: the einsum path on CPU (measured 1.6x faster than XLA's dot_product_attention for a
    # whole train step of experiments/shakespeare_char.yaml), cuDNN flash attention on NVIDIA GPUs
    # where it can run, XLA's dot_product_attention otherwise (model.kernels.choose_attention says why).
    attention_impl: AttentionImpl = "auto"

    def __post_init__(self) -> None:
        _check_literals(self)
        _check_model(self)

    # Derived values.
    @property
    def padded_vocab(self) -> int:
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    @property
    def resolved_kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_head_dim(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def resolved_d_ff(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def resolved_rotary_dim(self) -> int:
        """Width of each head that rotary embeddings rotate (0 without rotary)."""
        if self.position != "rotary":
            return 0
        if self.rotary_dim is not None:
            return self.rotary_dim
        return int(self.resolved_head_dim * self.rotary_pct)

    @property
    def width_mult(self) -> float:
        """μP's m = d_model / mup_base_width (1 under the standard parametrization)."""
        return self.d_model / self.mup_base_width if self.parametrization == "mup" else 1.0

    @property
    def softmax_scale(self) -> float:
        if self.attn_scale is not None:
            return self.attn_scale
        d = self.resolved_head_dim
        if self.parametrization == "mup":
            # 1/d attention, equal to 1/sqrt(d) at the base model's head size.
            return math.sqrt(self.mup_base_head_dim or d) / d
        return 1.0 / math.sqrt(d)

    @property
    def layer_kinds(self) -> tuple[AttentionKind, ...]:
        p = self.attention_pattern
        return tuple(p[i % len(p)] for i in range(self.n_layers))

    @property
    def final_norm(self) -> bool:
        # Post-LN blocks end normalised already (GPT-1 has no final LayerNorm).
        return self.residual != "post_ln"

    @property
    def norms_per_block(self) -> int:
        return 1 if self.residual == "parallel_one_ln" else 2

    def replace(self, **changes: Any) -> ModelConfig:
        return from_dict(ModelConfig, {**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attention_pattern"] = list(d["attention_pattern"])
        return d


def from_dict(cls: type, data: dict[str, Any]):
    """Typed decoding of plain data (YAML/JSON) into a frozen config through draccus.

    Unknown keys are refused first, with the nearest valid names, at any nesting depth.
    """
    _check_keys(cls, data, cls.__name__)
    try:
        return draccus.decode(cls, data)
    except (draccus.utils.DecodingError, draccus.utils.ParsingError) as e:
        cause = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        raise (cause or ConfigError(f"{cls.__name__}: {e}")) from None


def _check_keys(cls: type, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(near)}?" if near else f"valid fields: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown field {key!r}; {hint}")
        _check_value(hints[key], value, f"{where}.{key}")


def _check_value(hint: Any, value: Any, where: str) -> None:
    """Recurses into dataclass fields, Optional dataclasses and mappings of dataclasses."""
    if dataclasses.is_dataclass(hint):
        _check_keys(hint, value, where)
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]) and isinstance(value, dict):
        for name, item in value.items():
            _check_keys(args[1], item, f"{where}.{name}")
    elif origin is tuple and args and dataclasses.is_dataclass(args[0]) and isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_keys(args[0], item, f"{where}[{i}]")
    elif value is not None and type(None) in args:
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if len(nested) == 1:
            _check_keys(nested[0], value, where)


def _check_literals(cfg: Any) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        hint = hints[f.name]
        allowed = _literal_values(hint)
        if allowed is not None:
            values = value if typing.get_origin(hint) is tuple else (value,)
            for v in values:
                if v not in allowed:
                    raise ConfigError(
                        f"{type(cfg).__name__}.{f.name} = {v!r} is not one of {', '.join(map(repr, allowed))}"
                    )


def _literal_values(hint: Any) -> tuple | None:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args and typing.get_origin(args[0]) is Literal:
            return typing.get_args(args[0])
    return None


def _require(ok: bool, field: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"ModelConfig.{field} = {value!r} is invalid: {accepted}")


def _check_model(c: ModelConfig) -> None:
    for name in ("vocab_size", "vocab_pad_multiple", "max_seq_len", "d_model", "n_layers", "n_heads"):
        _require(isinstance(getattr(c, name), int) and getattr(c, name) > 0, name, getattr(c, name),
                 "must be a positive integer")
    if c.head_dim is None:
        _require(c.d_model % c.n_heads == 0, "d_model", c.d_model,
                 f"must be divisible by n_heads = {c.n_heads} (or set head_dim)")
    else:
        _require(c.head_dim > 0, "head_dim", c.head_dim, "must be a positive integer")
    _require(c.n_kv_heads is None or (0 < c.n_kv_heads <= c.n_heads and c.n_heads % c.n_kv_heads == 0),
             "n_kv_heads", c.n_kv_heads, f"must divide n_heads = {c.n_heads}")
    _require(c.d_ff is None or c.d_ff > 0, "d_ff", c.d_ff, "must be a positive integer")
    _require(0.0 < c.rotary_pct <= 1.0, "rotary_pct", c.rotary_pct, "must be in (0, 1]")
    if c.position == "rotary":
        r = c.resolved_rotary_dim
        field = "rotary_dim" if c.rotary_dim is not None else "rotary_pct"
        _require(0 < r <= c.resolved_head_dim and r % 2 == 0, field, getattr(c, field),
                 f"rotated width {r} must be even, positive and at most head_dim = {c.resolved_head_dim}")
    _require(len(c.attention_pattern) > 0, "attention_pattern", c.attention_pattern,
             "must name at least one of 'global', 'local'")
    _require(c.local_window > 0, "local_window", c.local_window, "must be a positive integer")
    for name in ("embed_dropout", "attn_dropout", "resid_dropout"):
        _require(0.0 <= getattr(c, name) < 1.0, name, getattr(c, name), "must be in [0, 1)")
    _require(c.norm_eps > 0, "norm_eps", c.norm_eps, "must be positive")
    _require(c.mup_base_width > 0, "mup_base_width", c.mup_base_width, "must be a positive integer")
    _require(c.mup_base_head_dim is None or c.mup_base_head_dim > 0, "mup_base_head_dim", c.mup_base_head_dim,
             "must be a positive integer, or null when widths grow by adding heads of a fixed size")
    _require(not (c.tie_embeddings and c.head_bias), "head_bias", c.head_bias,
             "a tied output head has no bias; set tie_embeddings=false to use one")


# ---------------------------------------------------------------------------------------------
# Training run configuration. Field names are the override keys (`optim.lr=3e-4`), so sweeps
# can set them; the generated configuration reference (docs) lists them.

Optimizer = Literal["adamw", "lion", "adafactor"]
Schedule = Literal["cosine", "wsd", "constant"]
# hf: a Hugging Face tokenizer.json at data.tokenizer_path. init_from: the tokenizer stored with
# the checkpoint training starts from (the default when init_from is set).
Tokenizer = Literal["char", "gpt2", "r50k_base", "cl100k_base", "o200k_base", "hf", "init_from"]
NanPolicy = Literal["stop", "skip"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: Optimizer = "adamw"
    lr: float = 6e-4  # peak learning rate
    min_lr: float = 6e-5  # end of cosine decay / WSD decay
    schedule: Schedule = "cosine"
    warmup_steps: int = 100  # linear warmup from 0
    decay_steps: int | None = None  # cosine reaches min_lr here; None: the run's last step
    wsd_decay_fraction: float = 0.2  # WSD: share of the run spent decaying (Hu et al. 2024)
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; never on biases or norms
    decay_embeddings: bool = False  # nanoGPT decays every >=2-D tensor, embeddings included
    grad_clip: float | None = 1.0  # global-norm clipping; None disables
    z_loss: float = 0.0  # PaLM's auxiliary z-loss weight on log(Z)^2
    grad_accum: int = 1  # micro-batches per step; batch_size is split across them
    # Adafactor's own options (b1, b2 and eps belong to Adam and Lion): the exponent of its
    # second-moment decay 1 - t^-rate, and an optional first moment (off: the memory saving).
    adafactor_decay_rate: float = 0.8
    adafactor_momentum: float | None = None

    def __post_init__(self) -> None:
        _check_literals(self)
        _check_unused_options(self)
        for name in ("lr", "eps"):
            _require_in(self, name, getattr(self, name) > 0, "must be positive")
        _require_in(self, "min_lr", 0 <= self.min_lr <= self.lr, f"must be in [0, lr = {self.lr}]")
        _require_in(self, "warmup_steps", self.warmup_steps >= 0, "must be >= 0")
        _require_in(self, "grad_accum", self.grad_accum >= 1, "must be >= 1")
        _require_in(self, "weight_decay", self.weight_decay >= 0, "must be >= 0")
        _require_in(self, "wsd_decay_fraction", 0 < self.wsd_decay_fraction <= 1, "must be in (0, 1]")
        _require_in(self, "adafactor_decay_rate", 0 < self.adafactor_decay_rate <= 1, "must be in (0, 1]")
        _require_in(self, "adafactor_momentum",
                    self.adafactor_momentum is None or 0 <= self.adafactor_momentum < 1, "must be in [0, 1) or null")
        _require_in(self, "grad_clip", self.grad_clip is None or self.grad_clip > 0, "must be positive or null")


# Options each optimizer does not read: setting one is refused rather than silently ignored.
_UNUSED_OPTIONS = {
    "adamw": ("adafactor_decay_rate", "adafactor_momentum"),
    "lion": ("eps", "adafactor_decay_rate", "adafactor_momentum"),
    "adafactor": ("b1", "b2", "eps"),
}


def _check_unused_options(cfg: OptimConfig) -> None:
    defaults = OptimConfig.__dataclass_fields__
    for name in _UNUSED_OPTIONS[cfg.name]:
        default = defaults[name].default
        if getattr(cfg, name) != default:
            used = [f for f in ("b1", "b2", "eps", "adafactor_decay_rate", "adafactor_momentum")
                    if f not in _UNUSED_OPTIONS[cfg.name]]
            raise ConfigError(f"OptimConfig.{name} = {getattr(cfg, name)!r} is not used by {cfg.name!r}; leave it "
                              f"at its default ({default!r}). {cfg.name} reads {', '.join(used)}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    corpus: str = "tinyshakespeare"  # a named corpus (downloaded and verified), or a text file path
    # Your own documents instead of `corpus`: .txt files (one document each) and .jsonl files (one
    # document per line, in `text_field`), paths or globs; documents are joined by end-of-text.
    text_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()  # explicit validation documents; empty: the last val_fraction
    text_field: str = "text"
    # Supervised fine-tuning (sft.py): prompt/response or chat-messages JSONL; the loss covers
    # responses only; examples packed into rows with per-example attention, or one per row.
    sft_files: tuple[str, ...] = ()
    sft_packing: bool = True
    chat_template: str = "<|{role}|>\n{content}\n"
    tokenizer: Tokenizer = "gpt2"
    tokenizer_path: str | None = None  # tokenizer.json, or a directory holding one (tokenizer: hf)
    # Existing train.bin/val.bin to use as is: nanoGPT's layout (+ meta.pkl), or what `gptjax data
    # prepare --output` wrote (+ meta.json); a local directory, gs:// or s3://.
    token_dir: str | None = None
    read_cache_mb: int = 256  # token files on object storage: at most this much read-ahead kept per split
    val_fraction: float = 0.1  # the last fraction of the token stream is validation
    batch_size: int = 12  # global batch, in sequences, per optimizer step
    seq_len: int | None = None  # None: model.max_seq_len
    encode_threads: int = 4
    # text_files are tokenized by this many processes (one text at a time each); None: one process
    # running the tokenizer's own batch encoder on encode_threads threads.
    encode_processes: int | None = None
    # Characters a character vocabulary lacks (fine-tuning a character model on another text):
    # refused (error), dropped, or replaced by a space; counted in the run's log and meta.json.
    unknown_chars: Literal["error", "drop", "replace"] = "error"

    def __post_init__(self) -> None:
        _check_literals(self)
        _require_in(self, "tokenizer_path", (self.tokenizer == "hf") == (self.tokenizer_path is not None),
                    "set it exactly when data.tokenizer = 'hf' (a tokenizer.json or a directory holding one)")
        _require_in(self, "val_files", not self.val_files or self.text_files or self.sft_files,
                    "validation files go with data.text_files or data.sft_files; set those too")
        _require_in(self, "sft_files", not (self.sft_files and self.text_files),
                    "use data.text_files (language modelling) or data.sft_files (supervised), not both")
        _require_in(self, "chat_template", "{content}" in self.chat_template,
                    "must contain {content} (and may contain {role})")
        _require_in(self, "encode_processes", self.encode_processes is None or self.encode_processes >= 1,
                    "must be >= 1 or null")
        _require_in(self, "val_fraction", 0 < self.val_fraction < 1, "must be in (0, 1)")
        _require_in(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        _require_in(self, "read_cache_mb", self.read_cache_mb >= 1, "must be >= 1 (MiB)")
        _require_in(self, "seq_len", self.seq_len is None or self.seq_len >= 1, "must be >= 1 or null")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape; one axis may be -1 (all remaining devices). With `dcn_data` > 1 the
    (data, fsdp, tensor) axes are those of one slice, and data parallelism also runs across
    dcn_data slices over the data-centre network (multi-slice TPU; jax's hybrid device mesh)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1

    def __post_init__(self) -> None:
        sizes = (self.data, self.fsdp, self.tensor)
        _require_in(self, "data", all(s == -1 or s >= 1 for s in sizes) and sizes.count(-1) <= 1,
                    f"axis sizes {sizes} must be positive, with at most one -1")
        _require_in(self, "dcn_data", self.dcn_data >= 1, "a number of slices >= 1")


LoraTarget = Literal["attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.gate", "mlp.down"]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021) on the block projections: W + (alpha / rank) · A·B with
    A [in, rank] and B [rank, out] (B starts at zero, so training starts from the base model)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on each adapter's input, during training (PEFT's lora_dropout)
    targets: tuple[LoraTarget, ...] = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")

    def __post_init__(self) -> None:
        _check_literals(self)
        _require_in(self, "rank", self.rank >= 1, "must be >= 1")
        _require_in(self, "alpha", self.alpha > 0, "must be positive")
        _require_in(self, "dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)")
        _require_in(self, "targets", len(self.targets) > 0 and len(set(self.targets)) == len(self.targets),
                    "must name each target once, at least one")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


Task = Literal["classification", "entailment", "similarity", "multiple_choice"]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    lora: LoraConfig | None = None  # None: full fine-tuning (every parameter trains)
    # GPT-1's task fine-tuning (gptjax finetune; finetune/task_heads.py): the task, its JSONL files, and λ of
    # L3 = L2 (task) + λ · L1 (language modelling on the task's own inputs).
    task: Task | None = None
    train_file: str | None = None
    eval_file: str | None = None
    aux_lm_weight: float = 0.5

    def __post_init__(self) -> None:
        _check_literals(self)
        _require_in(self, "aux_lm_weight", self.aux_lm_weight >= 0, "must be >= 0")
        _require_in(self, "train_file", (self.task is None) == (self.train_file is None),
                    "a task fine-tuning run needs finetune.task and finetune.train_file together")


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One benchmark of `gptjax eval` on a local file, scored during training by the same scorer."""

    task: str  # a task name of `gptjax eval` (checked when the run starts)
    data: str
    shots: int = 0
    limit: int | None = None  # only the first `limit` items
    fewshot_data: str | None = None  # the file demonstrations are drawn from (with shots > 0)
    name: str | None = None  # metrics are eval/NAME/...; None: the task, with _Kshot when shots > 0

    def __post_init__(self) -> None:
        _require_in(self, "shots", self.shots >= 0, "must be >= 0")
        _require_in(self, "limit", self.limit is None or self.limit >= 1, "must be >= 1 or null")
        _require_in(self, "fewshot_data", (self.shots > 0) == (self.fewshot_data is not None),
                    "give it exactly when shots > 0 (the train or dev file demonstrations come from)")
        _require_in(self, "name", self.name is None or _METRIC_NAME.fullmatch(self.name),
                    "must be letters, digits, '_', '-' or '.'")

    @property
    def metric_name(self) -> str:
        return self.name or (f"{self.task}_{self.shots}shot" if self.shots else self.task)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What each evaluation measures besides the validation split: held-out text (loss and bits per
    byte, comparable across tokenizers) and benchmark tasks, in metrics.jsonl as eval/NAME/METRIC
    and in result.json under `evals`."""

    # name -> a held-out file: UTF-8 text (.txt), JSON lines (.jsonl, data.text_field), or a token
    # file (.bin, nanoGPT's layout, in the run's tokenizer; decoded to count bytes).
    sets: dict[str, str] = dataclasses.field(default_factory=dict)
    tasks: tuple[EvalTask, ...] = ()
    tasks_every: int | None = None  # steps between task evaluations; None: at the last step only

    def __post_init__(self) -> None:
        for name in self.sets:
            _require_in(self, "sets", _METRIC_NAME.fullmatch(str(name)) is not None,
                        f"set name {name!r} must be letters, digits, '_', '-' or '.'")
        names = [t.metric_name for t in self.tasks]
        _require_in(self, "tasks", len(set(names)) == len(names) and not set(names) & set(self.sets),
                    f"names {names} (and eval.sets {list(self.sets)}) must be distinct; set `name` on repeats")
        _require_in(self, "tasks_every", self.tasks_every is None or self.tasks_every >= 1, "must be >= 1 or null")


_METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]+")
WandbMode = Literal["online", "offline", "disabled"]


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases (the `wandb` extra): one W&B run per gptjax run, continued on every restart."""

    project: str = "gptjax"
    entity: str | None = None
    group: str | None = None  # a sweep sets its name here
    mode: WandbMode = "online"  # offline: files under the run directory only, nothing sent

    def __post_init__(self) -> None:
        _check_literals(self)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    wandb: WandbConfig | None = None  # None: no W&B (metrics.jsonl and TensorBoard always)


FaultPhase = Literal["start", "step", "save", "eval", "end"]
FaultSignal = Literal["SIGKILL", "SIGTERM"]


@dataclasses.dataclass(frozen=True)
class SampleDefaults:
    """How text is sampled from a trained model when nobody says otherwise: `gptjax sample`,
    generation.sample and a run's end-of-run sample (nanoGPT's sample.py settings).
    `gptjax.generate` itself is greedy unless told otherwise, as transformers' generate is."""

    temperature: float = 0.8
    top_k: int | None = 200


SAMPLE = SampleDefaults()


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """Deliberate failures for fault-injection tests (tests/faults); every field off by default."""

    nan_at_step: int | None = None  # the loss of this step (1-based) becomes NaN inside the step
    # SIGKILL this process at step kill_at_step: right after dispatching it ("step"), right after
    # its asynchronous checkpoint save started ("save"; the final save when it is the last step),
    # or after the first batch of its evaluation ("eval"); or, with kill_at_step 0, as a fresh run
    # starts, before anything is written ("start"); or once the last step's checkpoint is
    # committed, before the end-of-run sample and result ("end").
    kill_at_step: int | None = None
    kill_during: FaultPhase = "save"
    kill_process: int | None = None  # only this process index kills itself (None: every process)
    kill_signal: FaultSignal = "SIGKILL"  # SIGTERM: what a preemption sends (the run saves and stops)
    # Just before the checkpoint save of this step, fill the run directory's filesystem (a small
    # one: fault_hooks.fill_disk refuses more than 256 MiB free) so that the save runs out of space.
    fill_disk_at_step: int | None = None
    # The data source blocks for ever before step hang_at_step (once per run directory: the
    # restarted run passes), as a stalled read or a lost peer would: the watchdog's test.
    hang_at_step: int | None = None

    def __post_init__(self) -> None:
        _check_literals(self)

    def kills(self, step: int, phase: str) -> bool:
        import jax

        return (self.kill_at_step == step and self.kill_during == phase
                and self.kill_process in (None, jax.process_index()))


@dataclasses.dataclass(frozen=True)
class WatchdogConfig:
    """A hang becomes exit code 3, which the launchers restart (training/watchdog.py)."""

    # Seconds without a completed step before the run is declared hung; None: 20 times the median
    # step time after warm-up, at least 300 s (the start-up budget until steps have been timed).
    timeout_s: float | None = None
    # Seconds for start-up (distributed initialisation, peer barrier, restore, first compile) and
    # for each evaluation and checkpoint save.
    startup_s: float = 1800.0

    def __post_init__(self) -> None:
        _require_in(self, "timeout_s", self.timeout_s is None or self.timeout_s > 0, "None (automatic) or seconds > 0")
        _require_in(self, "startup_s", self.startup_s > 0, "seconds > 0")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """A jax.profiler trace of `steps` train steps into the run directory's profile/ (TensorBoard's
    profile plugin, XProf or Perfetto), with a text summary of where their time went. Off while
    start_step is None."""

    start_step: int | None = None  # the first traced step as logged (1-based); 0: the second step this
    # process runs (its first one compiles)
    steps: int = 3

    def __post_init__(self) -> None:
        _require_in(self, "start_step", self.start_step is None or self.start_step >= 0,
                    "None (no trace), 0 (after the first step) or a step number >= 1")
        _require_in(self, "steps", self.steps >= 1, "a number of steps >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: model, optimiser, data, mesh, and the loop's cadence."""

    name: str = "run"
    # A Hugging Face, gptjax or run directory to start from: its model config and weights (only
    # shape-free model fields may differ: see warm_start.SHAPE_FREE_FIELDS) and, by default, its tokenizer.
    init_from: str | None = None
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    faults: FaultConfig = dataclasses.field(default_factory=FaultConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    profile: ProfileConfig = dataclasses.field(default_factory=ProfileConfig)
    watchdog: WatchdogConfig = dataclasses.field(default_factory=WatchdogConfig)
    steps: int = 2000
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250  # and at the last step; validation covers the whole split
    eval_batch_size: int = 64
    checkpoint_every: int = 500  # and at the last step
    keep_last: int = 2
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this
    nan_policy: NanPolicy = "stop"  # stop: end the run at a non-finite loss; skip: drop that update
    peak_flops: float | None = None  # per device, for MFU; None: measured once by a matmul benchmark
    sample_tokens: int = 200  # a sample written at the end of the run

    def __post_init__(self) -> None:
        _check_literals(self)
        for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_last", "eval_batch_size"):
            _require_in(self, name, getattr(self, name) >= 1, "must be >= 1")
        if self.resolved_seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len = {self.resolved_seq_len} exceeds model.max_seq_len = "
                              f"{self.model.max_seq_len}; use at most that")
        if self.finetune.lora is not None and self.init_from is None:
            raise ConfigError("finetune.lora adapts a pretrained model: set init_from to the checkpoint to adapt")
        if self.data.batch_size % self.optim.grad_accum:
            raise ConfigError(f"optim.grad_accum = {self.optim.grad_accum} must divide data.batch_size = "
                              f"{self.data.batch_size}")

    @property
    def resolved_seq_len(self) -> int:
        return self.model.max_seq_len if self.data.seq_len is None else self.data.seq_len

    def to_dict(self) -> dict[str, Any]:
        return draccus.encode(self)


def _require_in(cfg: Any, field: str, ok: bool, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{type(cfg).__name__}.{field} = {getattr(cfg, field)!r} is invalid: {accepted}")


# ---------------------------------------------------------------------------------------------
# Comparing configs (the resume policy is training/resume.py; fingerprints below).

def flat_fields(cfg: TrainConfig) -> dict[str, Any]:
    """{"model.d_model": 128, "steps": 2000, ...} with the override keys as names."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = node

    walk("", cfg.to_dict())
    return out


def config_changes(old: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for every field that differs."""
    a, b = flat_fields(old), flat_fields(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# ---------------------------------------------------------------------------------------------
# A run's fingerprint: the fields that change what it trains. Left out: how it is executed (what a
# sweep plan may choose per run: mesh, remat, scan, attention kernel, micro-batching that keeps the
# global batch, encoding parallelism), what and when it evaluates (adding eval.sets to a finished
# study leaves its runs current), checkpoint and logging cadence, tracking, profiling, the end-of-run sample,
# the MFU reference, the run's name, and deliberate kills (a killed run resumes to the same result).

UNTRAINED_FIELDS = (*(f"model.{f}" for f in KERNEL_FIELDS), "mesh", "optim.grad_accum", "data.encode_threads",
                    "data.read_cache_mb",
                    "data.encode_processes", "name", "eval", "eval_every", "eval_batch_size", "checkpoint_every",
                    "keep_last", "keep_every", "log_every", "logging", "profile", "sample_tokens", "peak_flops",
                    "faults.kill_at_step", "faults.kill_during", "faults.kill_process", "faults.kill_signal",
                    "faults.fill_disk_at_step", "faults.hang_at_step", "watchdog")


def is_trained_field(field: str) -> bool:
    return not any(field == f or field.startswith(f + ".") for f in UNTRAINED_FIELDS)


def trained_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The fields behind the fingerprint, `data.seq_len` resolved (null means model.max_seq_len)."""
    fields = {k: v for k, v in flat_fields(cfg).items() if is_trained_field(k)}
    fields["data.seq_len"] = cfg.resolved_seq_len
    return fields


def fingerprint(cfg: TrainConfig) -> str:
    text = json.dumps(trained_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trained_changes(old: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for every field behind the fingerprint that differs."""
    a, b = trained_fields(old), trained_fields(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
