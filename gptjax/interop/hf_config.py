"""Hugging Face configs: how each model type's config.json maps onto ModelConfig and back.

Each model type is one `Family`: its config keys (renamed both ways, with HF's class defaults for
omitted keys), the fields only its own code can read or write, and its tensor table (hf_tables).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from gptjax.config import ConfigError, ModelConfig
from gptjax.interop import hf_tables
from gptjax.interop.hf_tables import Rule

CONFIG_FILE = "config.json"
# Fields that change the stored layout but not the function: a loader may choose them.
LAYOUT_FIELDS = ("vocab_pad_multiple", "param_dtype")
# Biases a model type may have where a gptjax model has none: exported as zeros (a zero bias is no
# bias), and an all-zero group of them is read back as absent (hf.model_config).
BIAS_FLAGS = ("qkv_bias", "out_bias", "mlp_bias", "norm_bias", "head_bias")

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


def config_to_hf(cfg: ModelConfig, model_type: str | None = None, *, zero_biases: bool = True) -> dict[str, Any]:
    """config.json for `cfg` as `model_type` (None: the first family that represents it exactly,
    preferring one that needs no zero biases). ConfigError if HF would build a different model
    from it. With `zero_biases`, biases the model type always has and `cfg` lacks are allowed:
    the export writes them as zeros (`exported_config`)."""
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
    _check_exact(exported_config(cfg, back) if zero_biases else cfg, back, family.model_type)
    return hf


def exported_config(cfg: ModelConfig, hf_model: ModelConfig) -> ModelConfig:
    """`cfg` with the biases the Hugging Face model `hf_model` has and `cfg` lacks (BIAS_FLAGS):
    the model an export of `cfg` writes, those biases zero."""
    added = {flag: True for flag in BIAS_FLAGS if getattr(hf_model, flag) and not getattr(cfg, flag)}
    if added.get("head_bias") and cfg.tie_embeddings:
        del added["head_bias"]  # a tied head has no bias; _check_exact names the mismatch
    return cfg.replace(**added) if added else cfg


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
    for zero_biases in (False, True):
        for model_type in FAMILIES:
            try:
                return config_to_hf(cfg, model_type, zero_biases=zero_biases)
            except ConfigError as e:
                if zero_biases:
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
        read=_gpt2_read, write=_gpt2_write, tensors=hf_tables.gpt2,
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
        read=_neo_read, write=_neo_write, tensors=hf_tables.neo,
        ignored=(r"transformer\.h\.\d+\.attn\.attention\.(bias|masked_bias)",), aliases=_NEO_ALIASES),
    Family(
        "gptj", "GPTJForCausalLM", "transformer",
        renames=_SIZES + (("n_positions", "max_seq_len"), ("n_inner", "d_ff"), ("layer_norm_epsilon", "norm_eps"),
                          ("initializer_range", "init_std")) + _DROPOUTS_GPT2,
        defaults=dict(vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64,
                      n_inner=None, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02, tie_word_embeddings=False),
        read=_gptj_read, write=_gptj_write, tensors=hf_tables.gptj,
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
        read=_neox_read, write=_neox_write, tensors=hf_tables.neox,
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
        read=_llama_read, write=_llama_write, tensors=hf_tables.llama,
        ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")),
    Family(
        "bloom", "BloomForCausalLM", "transformer",
        renames=(("vocab_size", "vocab_size"), ("hidden_size", "d_model"), ("n_layer", "n_layers"),
                 ("n_head", "n_heads"), ("layer_norm_epsilon", "norm_eps"), ("initializer_range", "init_std"),
                 ("hidden_dropout", "resid_dropout"), ("attention_dropout", "attn_dropout")),
        defaults=dict(vocab_size=250880, hidden_size=64, n_layer=2, n_head=8, layer_norm_epsilon=1e-5,
                      initializer_range=0.02, apply_residual_connection_post_layernorm=False, hidden_dropout=0.0,
                      attention_dropout=0.0, tie_word_embeddings=True),
        read=_bloom_read, write=_bloom_write, tensors=hf_tables.bloom,
        aliases=dict(n_embed="hidden_size", num_hidden_layers="n_layer", num_attention_heads="n_head")),
)

