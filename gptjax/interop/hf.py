"""Hugging Face interchange: configs and safetensors weights of gpt2, gpt_neo, gptj, gpt_neox,
llama and bloom checkpoints, in both directions.

Each model type is one `Family`: how its config.json maps onto ModelConfig, and a table of
(HF tensor name, our parameter paths, transform) rows. Export runs the same table backwards,
and every transform's two directions are exact inverses, so HF -> gptjax -> HF is lossless.

Loading builds the model abstractly and fills it from the checkpoint: nothing is randomly
initialised, and weights are only read after the config has been accepted.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx

from gptjax.config import EXECUTION_FIELDS, ConfigError, ModelConfig
from gptjax.model import kernels
from gptjax.model.gpt import GPT, abstract_model
from gptjax.model.layers import DTYPES
from gptjax.store import tensor_files
from gptjax.store.tensor_files import CheckpointError

CONFIG_FILE = "config.json"
# Fields that change the stored layout but not the function: a loader may choose them.
LAYOUT_FIELDS = ("vocab_pad_multiple", "param_dtype")
_STORAGE_DTYPES = {"F32": "float32", "F16": "float32", "BF16": "bfloat16"}  # F16 -> F32 is exact

# --------------------------------------------------------------------------------------------
# Config mapping
# --------------------------------------------------------------------------------------------

_GELU_TANH_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_ACTIVATIONS_FROM_HF = {**dict.fromkeys(_GELU_TANH_NAMES, "gelu_tanh"), "gelu": "gelu", "relu": "relu"}
_ACTIVATIONS_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


@dataclasses.dataclass(frozen=True)
class Family:
    """One Hugging Face model type: config keys, architecture class and tensor table."""

    model_type: str
    architecture: str
    prefix: str  # base-model prefix of tensor names ("transformer.h.0..." in a *ForCausalLM file)
    renames: tuple[tuple[str, str], ...]  # (config.json key, ModelConfig field), copied both ways
    defaults: dict[str, Any]  # HF's class defaults, for config.json files that omit a key
    read: Callable[[dict[str, Any]], dict[str, Any]]  # ModelConfig fields the renames cannot give
    write: Callable[[ModelConfig], dict[str, Any]]
    tensors: Callable[[str], tuple[Rule, ...]]  # the table, given the prefix
    ignored: tuple[str, ...] = ()  # regexes of non-parameter buffers old checkpoints carry
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # HF attribute_map entries


def _field(hf: dict[str, Any], key: str, family: Family) -> Any:
    if key in hf:
        return hf[key]
    if key in family.defaults:
        return family.defaults[key]
    raise ConfigError(f"{family.model_type} config.json has no {key!r} and Hugging Face has no default for it")


def _require(hf: dict[str, Any], family: Family, key: str, accepted: Any) -> None:
    value = _field(hf, key, family)
    if value != accepted:
        raise ConfigError(f"{family.model_type} config.json: {key} = {value!r} cannot be represented by "
                          f"gptjax; accepted: {accepted!r}")


def _activation(hf: dict[str, Any], family: Family, key: str) -> str:
    name = _field(hf, key, family)
    if name not in _ACTIVATIONS_FROM_HF:
        raise ConfigError(f"{family.model_type} config.json: {key} = {name!r} is not supported; accepted: "
                          f"{', '.join(sorted(_ACTIVATIONS_FROM_HF))}")
    return _ACTIVATIONS_FROM_HF[name]


def _hf_activation(cfg: ModelConfig, model_type: str) -> str:
    if cfg.activation not in _ACTIVATIONS_TO_HF:
        raise ConfigError(f"ModelConfig.activation = {cfg.activation!r} cannot be exported as {model_type}; "
                          f"it accepts {', '.join(map(repr, _ACTIVATIONS_TO_HF))}")
    return _ACTIVATIONS_TO_HF[cfg.activation]


def _rope(hf: dict[str, Any], family: Family, theta_key: str, pct_key: str | None) -> tuple[float, float]:
    """(base, rotated fraction), read the way transformers 5 reads them: `rope_scaling` (older
    files) or `rope_parameters` first, then the legacy top-level keys, then HF's defaults."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"{family.model_type} config.json: {key} = {params!r} is not supported; accepted: "
                          "one flat object with rope_type 'default'")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{family.model_type} config.json: {key}.rope_type = {rope_type!r} (RoPE scaling) "
                          "is not supported; accepted: 'default'")
    base = params.get("rope_theta", _field(hf, theta_key, family))
    pct = params.get("partial_rotary_factor", _field(hf, pct_key, family)) if pct_key else 1.0
    return float(base), float(pct)


def _attention_pattern(hf: dict[str, Any], family: Family) -> tuple[str, ...]:
    """GPT-Neo's [[kinds, repeats], ...] expanded per layer, then cut to its shortest period."""
    types = _field(hf, "attention_types", family)
    try:
        kinds = [kind for item_kinds, repeats in types for _ in range(repeats) for kind in item_kinds]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"gpt_neo config.json: attention_types = {types!r} is malformed; accepted: "
                          "[[['global', 'local'], repeats], ...]") from e
    n_layers = _field(hf, "num_layers", family)
    if len(kinds) != n_layers or any(k not in ("global", "local") for k in kinds):
        raise ConfigError(f"gpt_neo config.json: attention_types = {types!r} gives {kinds}; accepted: "
                          f"exactly num_layers = {n_layers} entries of 'global' or 'local'")
    period = next(p for p in range(1, len(kinds) + 1)
                  if all(kinds[i] == kinds[i % p] for i in range(len(kinds))))
    return tuple(kinds[:period])


def _gpt2_read(hf: dict[str, Any]) -> dict[str, Any]:
    f = FAMILIES["gpt2"]
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        _require(hf, f, key, False)
    return dict(position="learned", activation=_activation(hf, f, "activation_function"),
                attn_scale=None if _field(hf, "scale_attn_weights", f) else 1.0)


def _gpt2_write(cfg: ModelConfig) -> dict[str, Any]:
    return dict(activation_function=_hf_activation(cfg, "gpt2"), scale_attn_weights=cfg.attn_scale != 1.0,
                scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)


def _neo_read(hf: dict[str, Any]) -> dict[str, Any]:
    f = FAMILIES["gpt_neo"]
    # GPT-Neo's attention never divides scores by sqrt(head_dim) (softmax scale 1).
    return dict(position="learned", activation=_activation(hf, f, "activation_function"), attn_scale=1.0,
                qkv_bias=False, attention_pattern=_attention_pattern(hf, f))


def _neo_write(cfg: ModelConfig) -> dict[str, Any]:
    pattern = list(cfg.attention_pattern)
    types = [[pattern, cfg.n_layers // len(pattern)]] if cfg.n_layers % len(pattern) == 0 \
        else [[list(cfg.layer_kinds), 1]]
    return dict(activation_function=_hf_activation(cfg, "gpt_neo"), attention_types=types)


def _gptj_read(hf: dict[str, Any]) -> dict[str, Any]:
    f = FAMILIES["gptj"]
    rotary_dim = _field(hf, "rotary_dim", f)
    if not isinstance(rotary_dim, int) or rotary_dim <= 0:
        # transformers' GPT-J with rotary_dim None rotates with embed_dim-wide tables: not per-head RoPE.
        raise ConfigError(f"gptj config.json: rotary_dim = {rotary_dim!r} is not supported; accepted: a "
                          "positive even integer at most the head width")
    _require(hf, f, "tie_word_embeddings", False)  # GPT-J's lm_head has a bias, so it cannot be tied
    # GPT-J's sinusoid tables use base 10000 unconditionally.
    return dict(position="rotary", rotary_layout="gptj", rotary_dim=rotary_dim, rotary_base=10000.0,
                residual="parallel_one_ln", activation=_activation(hf, f, "activation_function"),
                qkv_bias=False, out_bias=False, head_bias=True)


def _gptj_write(cfg: ModelConfig) -> dict[str, Any]:
    return dict(rotary_dim=cfg.resolved_rotary_dim, activation_function=_hf_activation(cfg, "gptj"))


def _neox_read(hf: dict[str, Any]) -> dict[str, Any]:
    f = FAMILIES["gpt_neox"]
    base, pct = _rope(hf, f, "rotary_emb_base", "rotary_pct")
    bias = _field(hf, "attention_bias", f)
    residual = "parallel_two_ln" if _field(hf, "use_parallel_residual", f) else "pre_ln"
    return dict(position="rotary", rotary_layout="neox", rotary_pct=pct, rotary_base=base, residual=residual,
                activation=_activation(hf, f, "hidden_act"), qkv_bias=bias, out_bias=bias,
                embed_dropout=_field(hf, "hidden_dropout", f))  # NeoX drops embeddings at hidden_dropout


def _neox_write(cfg: ModelConfig) -> dict[str, Any]:
    # Written both ways: transformers 5 reads rope_parameters, 4.x the legacy keys.
    pct = cfg.resolved_rotary_dim / cfg.resolved_head_dim if cfg.position == "rotary" else 1.0
    if int(cfg.resolved_head_dim * pct) != cfg.resolved_rotary_dim:  # HF truncates head_dim * pct
        pct = math.nextafter(pct, 1.0)
    return dict(rotary_pct=pct, rotary_emb_base=cfg.rotary_base,
                rope_parameters=dict(rope_type="default", rope_theta=cfg.rotary_base, partial_rotary_factor=pct),
                use_parallel_residual=cfg.residual == "parallel_two_ln", attention_bias=cfg.qkv_bias,
                hidden_act=_hf_activation(cfg, "gpt_neox"))


def _llama_read(hf: dict[str, Any]) -> dict[str, Any]:
    f = FAMILIES["llama"]
    act = _field(hf, "hidden_act", f)
    if act not in ("silu", "swish"):
        raise ConfigError(f"llama config.json: hidden_act = {act!r} is not supported; accepted: 'silu' (SwiGLU)")
    # Llama's default RoPE rotates the whole head and ignores any partial_rotary_factor.
    base, _ = _rope(hf, f, "rope_theta", None)
    heads = _field(hf, "num_attention_heads", f)
    kv = _field(hf, "num_key_value_heads", f)
    bias = _field(hf, "attention_bias", f)
    return dict(position="rotary", rotary_layout="neox", rotary_base=base, norm="rmsnorm", norm_bias=False,
                activation="swiglu", qkv_bias=bias, out_bias=bias, n_kv_heads=None if kv in (None, heads) else kv)


def _llama_write(cfg: ModelConfig) -> dict[str, Any]:
    return dict(hidden_act="silu", num_key_value_heads=cfg.resolved_kv_heads, head_dim=cfg.resolved_head_dim,
                rope_theta=cfg.rotary_base, rope_parameters=dict(rope_type="default", rope_theta=cfg.rotary_base),
                attention_bias=cfg.qkv_bias)


def _bloom_read(hf: dict[str, Any]) -> dict[str, Any]:
    _require(hf, FAMILIES["bloom"], "apply_residual_connection_post_layernorm", False)
    # BLOOM's MLP is fixed: 4 x hidden with tanh-approximated GELU; ALiBi; LayerNorm after embedding.
    return dict(position="alibi", embed_norm=True, activation="gelu_tanh")


def _bloom_write(cfg: ModelConfig) -> dict[str, Any]:
    return dict(apply_residual_connection_post_layernorm=False)


def config_from_hf(hf_config: dict[str, Any]) -> ModelConfig:
    """ModelConfig of a Hugging Face config.json; ConfigError for anything not represented exactly."""
    family = _family(hf_config.get("model_type"))
    hf = {family.aliases.get(k, k): v for k, v in hf_config.items()}
    fields = {ours: _field(hf, key, family) for key, ours in family.renames}
    fields = {k: v for k, v in fields.items() if v is not None}  # None: ModelConfig derives it (d_ff)
    if "head_dim" in fields and fields["head_dim"] == fields["d_model"] // fields["n_heads"]:
        del fields["head_dim"]
    fields["tie_embeddings"] = bool(_field(hf, "tie_word_embeddings", family))
    fields.update(family.read(hf))
    return ModelConfig(**fields)


def config_to_hf(cfg: ModelConfig, model_type: str | None = None) -> dict[str, Any]:
    """config.json for `cfg` as `model_type` (None: the first family that represents it exactly).
    ConfigError if HF would build a different model from it."""
    if model_type is None:
        return _first_exact(cfg)
    family = _family(model_type)
    hf = {key: getattr(cfg, ours) for key, ours in family.renames}
    hf.update(_d_ff(cfg, family))
    hf.update(family.write(cfg))
    hf.update(model_type=family.model_type, architectures=[family.architecture],
              tie_word_embeddings=cfg.tie_embeddings, dtype=cfg.param_dtype, torch_dtype=cfg.param_dtype)
    try:
        back = config_from_hf(hf)
    except ConfigError as e:
        raise ConfigError(f"this ModelConfig cannot be exported as {family.model_type}: {e}") from e
    _check_exact(cfg, back, family.model_type)
    return hf


def _d_ff(cfg: ModelConfig, family: Family) -> dict[str, Any]:
    # gpt2/gpt_neo/gptj write null for "4 x d_model"; NeoX and Llama need the number.
    keys = [key for key, ours in family.renames if ours == "d_ff"]
    if not keys:
        return {}
    return {keys[0]: cfg.resolved_d_ff if family.model_type in ("gpt_neox", "llama") else cfg.d_ff}


def _family(model_type: Any) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(f"config.json: model_type = {model_type!r} is not supported; accepted: "
                          f"{', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def _first_exact(cfg: ModelConfig) -> dict[str, Any]:
    reasons = []
    for model_type in FAMILIES:
        try:
            return config_to_hf(cfg, model_type)
        except ConfigError as e:
            reasons.append(f"  {model_type}: {e}")
    raise ConfigError("no Hugging Face model type represents this ModelConfig exactly:\n" + "\n".join(reasons))


def architecture(cfg: ModelConfig) -> dict[str, Any]:
    """What decides a model's function and parameter shapes, keyed by the ModelConfig field that
    sets it; two configs that agree here compute the same function from the same weights."""
    a = dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
             n_kv_heads=cfg.resolved_kv_heads, head_dim=cfg.resolved_head_dim, d_ff=cfg.resolved_d_ff, position=cfg.position,
             residual=cfg.residual, norm=cfg.norm, norm_eps=cfg.norm_eps, embed_norm=cfg.embed_norm,
             activation=cfg.activation, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, mlp_bias=cfg.mlp_bias,
             head_bias=cfg.head_bias, tie_embeddings=cfg.tie_embeddings, attention_pattern=cfg.layer_kinds,
             attn_scale=cfg.softmax_scale, logit_scale=1.0 / cfg.width_mult)
    if cfg.position == "learned":
        a["max_seq_len"] = cfg.max_seq_len
    if cfg.position == "rotary":
        a.update(rotary_dim=cfg.resolved_rotary_dim, rotary_layout=cfg.rotary_layout, rotary_base=cfg.rotary_base)
    if cfg.norm == "layernorm":
        a["norm_bias"] = cfg.norm_bias
    if "local" in cfg.layer_kinds:
        a["local_window"] = cfg.local_window
    return a


def _check_exact(cfg: ModelConfig, back: ModelConfig, model_type: str) -> None:
    ours, theirs = architecture(cfg), architecture(back)
    for name, value in ours.items():
        if theirs.get(name) != value:
            raise ConfigError(f"ModelConfig.{name} = {value!r} cannot be exported as {model_type}: its config "
                              f"would give {theirs.get(name)!r}")


def with_overrides(cfg: ModelConfig, overrides: dict[str, Any], allowed: tuple[str, ...]) -> ModelConfig:
    for name in overrides:
        if name not in allowed:
            raise ConfigError(f"ModelConfig.{name} cannot be overridden when loading a checkpoint (it would "
                              f"change the model the weights belong to); accepted: {', '.join(allowed)}")
    return cfg.replace(**overrides) if overrides else cfg


# --------------------------------------------------------------------------------------------
# Tensor transforms: HF layout <-> our per-layer layout. `shapes` are our per-layer shapes with
# the vocabulary axis at its unpadded size.
# --------------------------------------------------------------------------------------------

def _matrix(shape: tuple[int, ...], n_in: int) -> tuple[int, ...]:
    """Our Dense kernel flattened to [in, out] (n_in leading dims are inputs); a vector when n_in is 0."""
    if n_in == 0:
        return (math.prod(shape),)
    return (math.prod(shape[:n_in]), math.prod(shape[n_in:]))


@dataclasses.dataclass(frozen=True)
class Copy:
    """HF stores [in, out] like we do (GPT-2's Conv1D, embeddings, norms, biases): only a reshape."""

    n_in: int

    def hf_shape(self, shapes):
        return _matrix(shapes[0], self.n_in)

    def to_ours(self, x, shapes):
        return (x.reshape(shapes[0]),)

    def to_hf(self, ys):
        return ys[0].reshape(_matrix(ys[0].shape, self.n_in))


@dataclasses.dataclass(frozen=True)
class Linear:
    """torch.nn.Linear weight [out, in]: transposed."""

    n_in: int

    def hf_shape(self, shapes):
        return _matrix(shapes[0], self.n_in)[::-1]

    def to_ours(self, x, shapes):
        return (x.T.reshape(shapes[0]),)

    def to_hf(self, ys):
        return ys[0].reshape(_matrix(ys[0].shape, self.n_in)).T


@dataclasses.dataclass(frozen=True)
class SplitColumns:
    """GPT-2's c_attn: Conv1D [D, 3*D] (or bias [3*D]) holding q | k | v as consecutive column blocks."""

    n_in: int

    def hf_shape(self, shapes):
        parts = [_matrix(s, self.n_in) for s in shapes]
        return parts[0][:-1] + (sum(p[-1] for p in parts),)

    def to_ours(self, x, shapes):
        sizes = np.cumsum([_matrix(s, self.n_in)[-1] for s in shapes])[:-1]
        return tuple(part.reshape(s) for part, s in zip(np.split(x, sizes, axis=-1), shapes))

    def to_hf(self, ys):
        return np.concatenate([y.reshape(_matrix(y.shape, self.n_in)) for y in ys], axis=-1)


@dataclasses.dataclass(frozen=True)
class HeadInterleaved:
    """NeoX/BLOOM query_key_value: Linear weight [N*3*H, D] (or bias [N*3*H]) whose output axis is
    laid out [heads, (q, k, v), head_dim], not [(q, k, v), heads, head_dim]."""

    n_in: int  # 1 for the weight (our [D, N, H]), 0 for the bias (our [N, H])

    def hf_shape(self, shapes):
        n, h = shapes[0][self.n_in:]
        return (n * 3 * h, shapes[0][0]) if self.n_in else (n * 3 * h,)

    def to_ours(self, x, shapes):
        n, h = shapes[0][self.n_in:]
        x = x.reshape((n, 3, h) + x.shape[1:])  # [N, 3, H(, D)]
        return tuple(np.moveaxis(x[:, j], -1, 0) if self.n_in else x[:, j] for j in range(3))

    def to_hf(self, ys):
        heads_first = [np.moveaxis(y, 0, -1) if self.n_in else y for y in ys]  # [N, H(, D)]
        stacked = np.stack(heads_first, axis=1)  # [N, 3, H(, D)]
        return stacked.reshape((-1,) + stacked.shape[3:])


VECTOR, EMBEDDING, CONV1D, CONV1D_FROM_HEADS = Copy(0), Copy(1), Copy(1), Copy(2)
LINEAR, LINEAR_FROM_HEADS = Linear(1), Linear(2)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor ({i}: layer index) and the parameter(s) of ours it holds."""

    hf: str
    ours: tuple[str, ...]
    transform: Any = VECTOR
    aliases: tuple[str, ...] = ()  # older names accepted on import; export writes `hf`

    def names(self, layer: int | None) -> tuple[str, ...]:
        return tuple(n.format(i=layer) for n in (self.hf,) + self.aliases)

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def _r(hf: str, ours: str | tuple[str, ...], transform: Any = VECTOR, aliases: tuple[str, ...] = ()) -> Rule:
    return Rule(hf, (ours,) if isinstance(ours, str) else ours, transform, aliases)


def _norm(hf: str, ours: str) -> tuple[Rule, ...]:
    return _r(f"{hf}.weight", f"{ours}.scale"), _r(f"{hf}.bias", f"{ours}.bias")


def _dense(hf: str, ours: str, transform: Any) -> tuple[Rule, ...]:
    return _r(f"{hf}.weight", f"{ours}.kernel", transform), _r(f"{hf}.bias", f"{ours}.bias")


_QKV = ("blocks.attn.q", "blocks.attn.k", "blocks.attn.v")


def _gpt2_tensors(p: str) -> tuple[Rule, ...]:
    h = f"{p}.h.{{i}}"
    return (
        _r(f"{p}.wte.weight", "embed.table", EMBEDDING), _r(f"{p}.wpe.weight", "pos_embed.table", EMBEDDING),
        *_norm(f"{h}.ln_1", "blocks.ln1"),
        _r(f"{h}.attn.c_attn.weight", tuple(f"{q}.kernel" for q in _QKV), SplitColumns(1)),
        _r(f"{h}.attn.c_attn.bias", tuple(f"{q}.bias" for q in _QKV), SplitColumns(0)),
        *_dense(f"{h}.attn.c_proj", "blocks.attn.o", CONV1D_FROM_HEADS),
        *_norm(f"{h}.ln_2", "blocks.ln2"),
        *_dense(f"{h}.mlp.c_fc", "blocks.mlp.up", CONV1D), *_dense(f"{h}.mlp.c_proj", "blocks.mlp.down", CONV1D),
        *_norm(f"{p}.ln_f", "final_norm"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


def _neo_tensors(p: str) -> tuple[Rule, ...]:
    h, a = f"{p}.h.{{i}}", f"{p}.h.{{i}}.attn.attention"
    return (
        _r(f"{p}.wte.weight", "embed.table", EMBEDDING), _r(f"{p}.wpe.weight", "pos_embed.table", EMBEDDING),
        *_norm(f"{h}.ln_1", "blocks.ln1"),
        *(_r(f"{a}.{x}_proj.weight", f"blocks.attn.{x}.kernel", LINEAR) for x in "qkv"),
        *_dense(f"{a}.out_proj", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_norm(f"{h}.ln_2", "blocks.ln2"),
        *_dense(f"{h}.mlp.c_fc", "blocks.mlp.up", LINEAR), *_dense(f"{h}.mlp.c_proj", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.ln_f", "final_norm"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


def _gptj_tensors(p: str) -> tuple[Rule, ...]:
    h = f"{p}.h.{{i}}"
    return (
        _r(f"{p}.wte.weight", "embed.table", EMBEDDING), *_norm(f"{h}.ln_1", "blocks.ln1"),
        *(_r(f"{h}.attn.{x}_proj.weight", f"blocks.attn.{x}.kernel", LINEAR) for x in "qkv"),
        _r(f"{h}.attn.out_proj.weight", "blocks.attn.o.kernel", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.fc_in", "blocks.mlp.up", LINEAR), *_dense(f"{h}.mlp.fc_out", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.ln_f", "final_norm"), *_dense("lm_head", "head", LINEAR),
    )


def _fused_qkv(hf: str) -> tuple[Rule, ...]:
    return (_r(f"{hf}.weight", tuple(f"{q}.kernel" for q in _QKV), HeadInterleaved(1)),
            _r(f"{hf}.bias", tuple(f"{q}.bias" for q in _QKV), HeadInterleaved(0)))


def _neox_tensors(p: str) -> tuple[Rule, ...]:
    h = f"{p}.layers.{{i}}"
    return (
        _r(f"{p}.embed_in.weight", "embed.table", EMBEDDING),
        *_norm(f"{h}.input_layernorm", "blocks.ln1"), *_norm(f"{h}.post_attention_layernorm", "blocks.ln2"),
        *_fused_qkv(f"{h}.attention.query_key_value"),
        *_dense(f"{h}.attention.dense", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.dense_h_to_4h", "blocks.mlp.up", LINEAR),
        *_dense(f"{h}.mlp.dense_4h_to_h", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.final_layer_norm", "final_norm"),
        # embed_out is the name every transformers version loads (5.x renames it to lm_head).
        _r("embed_out.weight", "head.kernel", LINEAR, aliases=("lm_head.weight",)),
    )


def _llama_tensors(p: str) -> tuple[Rule, ...]:
    h = f"{p}.layers.{{i}}"
    return (
        _r(f"{p}.embed_tokens.weight", "embed.table", EMBEDDING),
        _r(f"{h}.input_layernorm.weight", "blocks.ln1.scale"),
        _r(f"{h}.post_attention_layernorm.weight", "blocks.ln2.scale"),
        *(r for x in "qkv" for r in _dense(f"{h}.self_attn.{x}_proj", f"blocks.attn.{x}", LINEAR)),
        *_dense(f"{h}.self_attn.o_proj", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.gate_proj", "blocks.mlp.gate", LINEAR), *_dense(f"{h}.mlp.up_proj", "blocks.mlp.up", LINEAR),
        *_dense(f"{h}.mlp.down_proj", "blocks.mlp.down", LINEAR),
        _r(f"{p}.norm.weight", "final_norm.scale"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


def _bloom_tensors(p: str) -> tuple[Rule, ...]:
    h = f"{p}.h.{{i}}"
    return (
        _r(f"{p}.word_embeddings.weight", "embed.table", EMBEDDING),
        *_norm(f"{p}.word_embeddings_layernorm", "embed_norm"),
        *_norm(f"{h}.input_layernorm", "blocks.ln1"), *_norm(f"{h}.post_attention_layernorm", "blocks.ln2"),
        *_fused_qkv(f"{h}.self_attention.query_key_value"),
        *_dense(f"{h}.self_attention.dense", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.dense_h_to_4h", "blocks.mlp.up", LINEAR),
        *_dense(f"{h}.mlp.dense_4h_to_h", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.ln_f", "final_norm"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


_SIZES = (("vocab_size", "vocab_size"), ("n_embd", "d_model"), ("n_layer", "n_layers"), ("n_head", "n_heads"))
_DROPOUTS_GPT2 = (("embd_pdrop", "embed_dropout"), ("attn_pdrop", "attn_dropout"), ("resid_pdrop", "resid_dropout"))
_GPT2_ALIASES = dict(hidden_size="n_embd", max_position_embeddings="n_positions", num_attention_heads="n_head",
                     num_hidden_layers="n_layer")
_NEO_ALIASES = dict(num_attention_heads="num_heads", num_hidden_layers="num_layers")

FAMILIES: dict[str, Family] = {}


def _register(*families: Family) -> None:
    FAMILIES.update({f.model_type: f for f in families})


_register(
    Family(
        "gpt2", "GPT2LMHeadModel", "transformer",
        renames=_SIZES + (("n_positions", "max_seq_len"), ("n_inner", "d_ff"), ("layer_norm_epsilon", "norm_eps"),
                          ("initializer_range", "init_std")) + _DROPOUTS_GPT2,
        defaults=dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                      activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                      layer_norm_epsilon=1e-5, initializer_range=0.02, scale_attn_weights=True,
                      scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                      add_cross_attention=False, tie_word_embeddings=True),
        read=_gpt2_read, write=_gpt2_write, tensors=_gpt2_tensors,
        ignored=(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",), aliases=_GPT2_ALIASES),
    Family(
        "gpt_neo", "GPTNeoForCausalLM", "transformer",
        renames=(("vocab_size", "vocab_size"), ("hidden_size", "d_model"), ("num_layers", "n_layers"),
                 ("num_heads", "n_heads"), ("max_position_embeddings", "max_seq_len"),
                 ("intermediate_size", "d_ff"), ("window_size", "local_window"),
                 ("layer_norm_epsilon", "norm_eps"), ("initializer_range", "init_std"),
                 ("embed_dropout", "embed_dropout"), ("attention_dropout", "attn_dropout"),
                 ("resid_dropout", "resid_dropout")),
        defaults=dict(vocab_size=50257, max_position_embeddings=2048, hidden_size=2048, num_layers=24,
                      attention_types=[[["global", "local"], 12]], num_heads=16, intermediate_size=None,
                      window_size=256, activation_function="gelu_new", resid_dropout=0.0, embed_dropout=0.0,
                      attention_dropout=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02,
                      tie_word_embeddings=True),
        read=_neo_read, write=_neo_write, tensors=_neo_tensors,
        ignored=(r"transformer\.h\.\d+\.attn\.attention\.(bias|masked_bias)",), aliases=_NEO_ALIASES),
    Family(
        "gptj", "GPTJForCausalLM", "transformer",
        renames=_SIZES + (("n_positions", "max_seq_len"), ("n_inner", "d_ff"), ("layer_norm_epsilon", "norm_eps"),
                          ("initializer_range", "init_std")) + _DROPOUTS_GPT2,
        defaults=dict(vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64,
                      n_inner=None, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02, tie_word_embeddings=False),
        read=_gptj_read, write=_gptj_write, tensors=_gptj_tensors,
        ignored=(r"transformer\.h\.\d+\.attn\.(bias|masked_bias|embed_positions)",), aliases=_GPT2_ALIASES),
    Family(
        "gpt_neox", "GPTNeoXForCausalLM", "gpt_neox",
        renames=(("vocab_size", "vocab_size"), ("hidden_size", "d_model"), ("num_hidden_layers", "n_layers"),
                 ("num_attention_heads", "n_heads"), ("max_position_embeddings", "max_seq_len"),
                 ("intermediate_size", "d_ff"), ("layer_norm_eps", "norm_eps"), ("initializer_range", "init_std"),
                 ("hidden_dropout", "resid_dropout"), ("attention_dropout", "attn_dropout")),
        defaults=dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
                      intermediate_size=24576, hidden_act="gelu", attention_dropout=0.0, hidden_dropout=0.0,
                      max_position_embeddings=2048, initializer_range=0.02, layer_norm_eps=1e-5,
                      tie_word_embeddings=False, use_parallel_residual=True, attention_bias=True,
                      rotary_emb_base=10000.0, rotary_pct=0.25),
        read=_neox_read, write=_neox_write, tensors=_neox_tensors,
        ignored=(r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",
                 r"gpt_neox\.rotary_emb\.inv_freq")),
    Family(
        "llama", "LlamaForCausalLM", "model",
        renames=(("vocab_size", "vocab_size"), ("hidden_size", "d_model"), ("num_hidden_layers", "n_layers"),
                 ("num_attention_heads", "n_heads"), ("head_dim", "head_dim"),
                 ("max_position_embeddings", "max_seq_len"), ("intermediate_size", "d_ff"),
                 ("rms_norm_eps", "norm_eps"), ("mlp_bias", "mlp_bias"), ("initializer_range", "init_std"),
                 ("attention_dropout", "attn_dropout")),
        defaults=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=None, hidden_act="silu",
                      max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False, attention_dropout=0.0,
                      mlp_bias=False, head_dim=None),
        read=_llama_read, write=_llama_write, tensors=_llama_tensors,
        ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")),
    Family(
        "bloom", "BloomForCausalLM", "transformer",
        renames=(("vocab_size", "vocab_size"), ("hidden_size", "d_model"), ("n_layer", "n_layers"),
                 ("n_head", "n_heads"), ("layer_norm_epsilon", "norm_eps"), ("initializer_range", "init_std"),
                 ("hidden_dropout", "resid_dropout"), ("attention_dropout", "attn_dropout")),
        defaults=dict(vocab_size=250880, hidden_size=64, n_layer=2, n_head=8, layer_norm_epsilon=1e-5,
                      initializer_range=0.02, apply_residual_connection_post_layernorm=False, hidden_dropout=0.0,
                      attention_dropout=0.0, tie_word_embeddings=True),
        read=_bloom_read, write=_bloom_write, tensors=_bloom_tensors,
        aliases=dict(n_embed="hidden_size", num_hidden_layers="n_layer", num_attention_heads="n_head")),
)

# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]  # per layer for block parameters, vocabulary axis at vocab_size
    vocab_axis: int | None
    stacked: bool


def _param_specs(state: nnx.State, cfg: ModelConfig) -> dict[str, ParamSpec]:
    specs = {}
    for path, variable in nnx.to_flat_state(state):
        axes = variable.get_metadata()["axes"]
        shape = list(variable.get_value().shape)
        stacked = axes[0] == "layers"
        if stacked:
            axes, shape = axes[1:], shape[1:]
        vocab_axis = axes.index("vocab") if "vocab" in axes else None
        if vocab_axis is not None:
            shape[vocab_axis] = cfg.vocab_size
        specs[".".join(map(str, path))] = ParamSpec(tuple(shape), vocab_axis, stacked)
    return specs


def _applicable(rules: tuple[Rule, ...], specs: dict[str, ParamSpec]) -> list[Rule]:
    """Rows whose parameters this config has (e.g. no bias rows when qkv_bias is False)."""
    return [r for r in rules if all(p in specs for p in r.ours)]


def _layers(rule: Rule, cfg: ModelConfig) -> list[int | None]:
    return list(range(cfg.n_layers)) if rule.per_layer else [None]


def _with_prefix(names: list[str], prefix: str) -> dict[str, str]:
    """Checkpoint name for each full name; base-model checkpoints (saved without the *ForCausalLM
    wrapper) lack the prefix on every tensor."""
    if any(n.startswith(prefix + ".") for n in names):
        return {n: n for n in names}
    return {f"{prefix}.{n}": n for n in names}


def _plan(family: Family, cfg: ModelConfig, specs: dict[str, ParamSpec], names: list[str]):
    """[(rule, layer, checkpoint name)] for every tensor to read; refuses missing and unexpected names."""
    available = _with_prefix(names, family.prefix)
    plan, missing, used = [], [], set()
    for rule in _applicable(family.tensors(family.prefix), specs):
        for layer in _layers(rule, cfg):
            found = [n for n in rule.names(layer) if n in available]
            if found:
                plan.append((rule, layer, available[found[0]]))
                used.add(found[0])
            else:
                missing.append(rule.names(layer)[0])
    unexpected = [n for n in available if n not in used and not _ignorable(n, family, cfg)]
    if missing or unexpected:
        raise CheckpointError(f"{family.model_type} checkpoint does not match its config.json: "
                              f"missing {_some(missing)}; unexpected {_some(unexpected)}")
    return plan


def _ignorable(name: str, family: Family, cfg: ModelConfig) -> bool:
    # A tied head may be saved as a copy of the embedding; _check_tied verifies it is one.
    tied = cfg.tie_embeddings and name in _head_names(family)
    return tied or any(re.fullmatch(p, name) for p in family.ignored)


def _head_names(family: Family) -> tuple[str, ...]:
    rule = next(r for r in family.tensors(family.prefix) if r.ours == ("head.kernel",))
    return rule.names(None)


def _some(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _iter_arrays(plan, reader: tensor_files.TensorReader, specs: dict[str, ParamSpec],
                 cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(our path, array) for each parameter, one rule's tensors at a time: the host never holds
    more than one rule's parameters (a checkpoint larger than host memory still loads)."""
    dtype = DTYPES[cfg.param_dtype]
    for _, group in itertools.groupby(plan, key=lambda item: item[0]):
        per_layer: dict[str, list[np.ndarray]] = {}
        for rule, _, name in group:
            shapes = [specs[p].shape for p in rule.ours]
            x = reader.read(name)
            expected = tuple(rule.transform.hf_shape(shapes))
            if x.shape != expected:
                raise CheckpointError(f"tensor {name} has shape {x.shape}; config.json implies {expected}")
            for path, y in zip(rule.ours, rule.transform.to_ours(x, shapes)):
                per_layer.setdefault(path, []).append(y)
        for path, ys in per_layer.items():
            yield path, _pad_vocab(np.stack(ys) if specs[path].stacked else ys[0], specs[path], cfg).astype(dtype)


def _pad_vocab(x: np.ndarray, spec: ParamSpec, cfg: ModelConfig) -> np.ndarray:
    # Padded rows are zero; the model masks their logits, so their values never matter.
    if spec.vocab_axis is None or cfg.padded_vocab == cfg.vocab_size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[spec.vocab_axis] = (0, cfg.padded_vocab - cfg.vocab_size)
    return np.pad(x, widths)


def _check_tied(family: Family, cfg: ModelConfig, reader: tensor_files.TensorReader) -> None:
    if not cfg.tie_embeddings:
        return
    available = _with_prefix(reader.names(), family.prefix)
    embed = next(r for r in family.tensors(family.prefix) if r.ours == ("embed.table",)).hf
    for head in _head_names(family):
        if head in available and not np.array_equal(reader.read(available[head]), reader.read(available[embed])):
            raise CheckpointError(f"{head} differs from {embed}, but config.json ties them "
                                  "(tie_word_embeddings); set it to false to load an untied head")


def _checkpoint_dtype(reader: tensor_files.TensorReader, names: list[str]) -> str:
    dtypes = {reader.dtype(n) for n in names}
    unknown = dtypes - set(_STORAGE_DTYPES)
    if unknown:
        raise CheckpointError(f"checkpoint stores {sorted(unknown)} tensors; accepted: {', '.join(_STORAGE_DTYPES)}")
    return "bfloat16" if dtypes == {"BF16"} else "float32"


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def load_hf(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """A GPT from a Hugging Face directory (config.json + safetensors). `overrides` may set
    EXECUTION_FIELDS, the vocabulary padding and the parameter dtype (default: the checkpoint's)."""
    directory = pathlib.Path(path)
    cfg = config_from_hf(tensor_files.read_json(directory, CONFIG_FILE))
    with_overrides(cfg, overrides, EXECUTION_FIELDS + LAYOUT_FIELDS)  # refuse bad overrides before reading
    cfg = with_overrides(cfg.replace(param_dtype=checkpoint_dtype(directory)), overrides,
                         EXECUTION_FIELDS + LAYOUT_FIELDS)
    graphdef, state = nnx.split(abstract_model(cfg, kernels.for_device(cfg, jax.local_devices()[0])))
    nnx.replace_by_pure_dict(state, read_params(directory, cfg, lambda _, a: jax.numpy.asarray(a)))
    return nnx.merge(graphdef, state)


def checkpoint_dtype(path: str | pathlib.Path) -> str:
    """float32 or bfloat16: the dtype the directory's weights are stored in."""
    directory = pathlib.Path(path)
    hf_config = tensor_files.read_json(directory, CONFIG_FILE)
    cfg, family = config_from_hf(hf_config), FAMILIES[hf_config["model_type"]]
    with tensor_files.open_safetensors(directory) as reader:
        plan = _plan(family, cfg, _param_specs(nnx.state(abstract_model(cfg)), cfg), reader.names())
        return _checkpoint_dtype(reader, [name for _, _, name in plan])


def read_params(path: str | pathlib.Path, cfg: ModelConfig,
                put: Callable[[str, np.ndarray], Any]) -> dict[str, Any]:
    """The directory's weights as a nested pure dict for `cfg` (its config.json's model, up to
    EXECUTION_FIELDS and LAYOUT_FIELDS), each parameter passed through `put(path, array)` as soon
    as it is read (a loader places it on its devices and the host copy is dropped)."""
    directory = pathlib.Path(path)
    hf_config = tensor_files.read_json(directory, CONFIG_FILE)
    ours = config_from_hf(hf_config)
    for name, value in dataclasses.asdict(cfg).items():
        if name not in EXECUTION_FIELDS + LAYOUT_FIELDS and value != getattr(ours, name):
            raise ConfigError(f"ModelConfig.{name} = {value!r} does not match {directory / CONFIG_FILE}, which gives "
                              f"{getattr(ours, name)!r}: the weights belong to that model")
    family = FAMILIES[hf_config["model_type"]]
    with tensor_files.open_safetensors(directory) as reader:
        # Spec shapes hold the unpadded vocabulary, so they do not depend on padding or dtype.
        specs = _param_specs(nnx.state(abstract_model(cfg)), cfg)
        plan = _plan(family, cfg, specs, reader.names())
        _checkpoint_dtype(reader, [name for _, _, name in plan])  # refuses unknown dtypes
        _check_tied(family, cfg, reader)
        done = {p: put(p, a) for p, a in _iter_arrays(plan, reader, specs, cfg)}
    _check_covered(done, specs, family)
    return _nest(done)


def _check_covered(done: dict[str, Any], specs: dict[str, ParamSpec], family: Family) -> None:
    left = sorted(set(specs) - set(done))
    if left:  # a config the table does not describe: a bug in this module, not in the checkpoint
        raise ConfigError(f"the {family.model_type} tensor table has no row for parameters {left}")


def export_hf(model: GPT, path: str | pathlib.Path, *, model_type: str | None = None,
              overwrite: bool = False, tokenizer=None) -> pathlib.Path:
    """Write config.json + model.safetensors that transformers loads as the same model, and with
    a `tokenizer` (default: the model's own, if it has one) tokenizer.json + tokenizer_config.json
    that AutoTokenizer loads and that encode as gptjax does."""
    cfg = model.cfg
    hf_config = config_to_hf(cfg, model_type)  # refuses lossy exports before anything is written
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    tokenizer_files = _tokenizer_files(tokenizer, cfg) if tokenizer is not None else {}
    if tokenizer is not None and tokenizer.eot_id is not None:
        hf_config.update(eos_token_id=tokenizer.eot_id, bos_token_id=tokenizer.eot_id)
    family = FAMILIES[hf_config["model_type"]]
    state = nnx.state(model, nnx.Param)
    specs = _param_specs(state, cfg)
    ours = {".".join(map(str, p)): np.asarray(jax.device_get(v.get_value())) for p, v in nnx.to_flat_state(state)}
    tensors = _export_tensors(family, cfg, specs, ours)
    with tensor_files.atomic_directory(path, overwrite=overwrite, last=(CONFIG_FILE,)) as tmp:
        tensor_files.write_json(tmp / CONFIG_FILE, hf_config)
        tensor_files.write_safetensors(tmp / tensor_files.SINGLE_FILE, tensors)
        for name, text in tokenizer_files.items():
            (tmp / name).write_text(text)
    return path


def _tokenizer_files(tokenizer, cfg: ModelConfig) -> dict[str, str]:
    """tokenizer.json and a tokenizer_config.json naming its end-of-text token. Special tokens a
    tokenizer adds past the model's vocabulary would index no embedding row: refused."""
    import json

    import tokenizers

    from gptjax.data.tokenizer import hf_tokenizer_json

    text = hf_tokenizer_json(tokenizer)
    tok = tokenizers.Tokenizer.from_str(text)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {size} tokens (added special tokens included) but the model's "
                          f"vocabulary is {cfg.vocab_size}; grow the vocabulary (model.vocab_size) when adding tokens")
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len,
                              "clean_up_tokenization_spaces": False}
    if tokenizer.eot_id is not None:
        eot = tok.id_to_token(tokenizer.eot_id)
        config.update(eos_token=eot, bos_token=eot, unk_token=eot)
    return {"tokenizer.json": text, "tokenizer_config.json": json.dumps(config, indent=1)}


def _export_tensors(family: Family, cfg: ModelConfig, specs: dict[str, ParamSpec],
                    ours: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    unpadded = {p: _unpad_vocab(a, specs[p], cfg) for p, a in ours.items()}
    tensors, used = {}, set()
    for rule in _applicable(family.tensors(family.prefix), specs):
        for layer in _layers(rule, cfg):
            parts = tuple(unpadded[p][layer] if layer is not None else unpadded[p] for p in rule.ours)
            tensors[rule.names(layer)[0]] = rule.transform.to_hf(parts)
            used.update(rule.ours)
    _check_covered({p: None for p in used}, specs, family)
    return tensors


def _unpad_vocab(x: np.ndarray, spec: ParamSpec, cfg: ModelConfig) -> np.ndarray:
    if spec.vocab_axis is None:
        return x
    axis = spec.vocab_axis + (1 if spec.stacked else 0)
    return np.take(x, np.arange(cfg.vocab_size), axis=axis)
