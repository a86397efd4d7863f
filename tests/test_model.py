"""Model options: each variant really changes the function, paths that must agree do agree."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import attention, positions
from gptjax.model.gpt import abstract_model, init_model

# Awkward sizes on purpose: 5 heads, width 40, vocabulary 97, sequence 12.
TINY = ModelConfig(vocab_size=97, max_seq_len=16, d_model=40, n_layers=2, n_heads=5, d_ff=72)
B, T = 2, 12


def tokens(seed=0, vocab=97):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


def logits_of(cfg, seed=0, **kw):
    return np.asarray(init_model(cfg, seed)(tokens(), **kw))


def perturbed(model, scale=0.1):
    """Noise on every parameter: norms start at ones and biases at zeros, which would make
    switches like shared-vs-two LayerNorms or bias on/off invisible at initialisation."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(123), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    return model


def assert_differ(a, b):
    rel = np.max(np.abs(a - b)) / np.max(np.abs(a))
    # 1e-4 is a thousand times float32 noise; gelu vs its tanh approximation differ by ~3e-4.
    assert rel > 1e-4, f"the two variants gave (nearly) the same logits: relative difference {rel:.2e}"


def test_forward_shape_and_finite():
    out = logits_of(TINY)
    assert out.shape == (B, T, 97) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_causal_future_tokens_do_not_change_the_past():
    model = init_model(TINY)
    t = tokens()
    t2 = t.at[:, 7:].set((t[:, 7:] + 1) % 97)
    a, b = np.asarray(model(t)), np.asarray(model(t2))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert_differ(a[:, 7:], b[:, 7:])


# Each entry: a field and two values that must give different functions from the same seed.
VARIANTS = [
    ("position", "learned", "none"),
    ("position", "rotary", "alibi"),
    ("rotary_layout", "neox", "gptj"),
    ("rotary_pct", 1.0, 0.5),
    ("residual", "pre_ln", "post_ln"),
    ("residual", "pre_ln", "parallel_two_ln"),
    ("residual", "parallel_one_ln", "parallel_two_ln"),
    ("norm", "layernorm", "rmsnorm"),
    ("norm_eps", 1e-5, 1e-1),
    ("activation", "gelu_tanh", "gelu"),
    ("activation", "gelu", "relu"),
    ("activation", "gelu", "swiglu"),
    ("n_kv_heads", None, 1),
    ("attn_scale", None, 1.0),
    ("attention_pattern", ("global",), ("local",)),
    ("tie_embeddings", True, False),
    ("embed_norm", False, True),
]


def _with(field, value):
    # A wide init makes attention sharp, so position and scale options visibly matter.
    extra = {"position": "rotary"} if field in ("rotary_layout", "rotary_pct") else {}
    if field == "attention_pattern":
        extra = {"local_window": 3}
    return TINY.replace(init_std=0.2, **extra, **{field: value})


@pytest.mark.slow
@pytest.mark.parametrize("field,a,b", VARIANTS, ids=[f"{v[0]}={v[1]}/{v[2]}" for v in VARIANTS])
def test_variant_changes_the_function(field, a, b):
    cfg_a, cfg_b = _with(field, a), _with(field, b)
    out_a = np.asarray(perturbed(init_model(cfg_a))(tokens()))
    out_b = np.asarray(perturbed(init_model(cfg_b))(tokens()))
    assert_differ(out_a, out_b)


def test_biases_switch_changes_the_function():
    # Zero-initialised biases only matter once they are non-zero: perturb every parameter.
    cfg_a, cfg_b = TINY, TINY.replace(qkv_bias=False, out_bias=False, mlp_bias=False, norm_bias=False)
    a, b = perturbed(init_model(cfg_a)), perturbed(init_model(cfg_b))
    n_a, n_b = (len(jax.tree.leaves(nnx.state(m, nnx.Param))) for m in (a, b))
    assert n_b == n_a - 9  # biases of q, k, v, o, up, down, ln1, ln2 and the final norm
    assert_differ(np.asarray(a(tokens())), np.asarray(b(tokens())))


def test_dropout_only_with_a_key_and_differs_by_key():
    cfg = TINY.replace(embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
    model = init_model(cfg)
    t = tokens()
    np.testing.assert_array_equal(np.asarray(model(t)), np.asarray(init_model(TINY)(t)))
    k1, k2 = np.asarray(model(t, key=jax.random.key(1))), np.asarray(model(t, key=jax.random.key(2)))
    assert_differ(k1, k2)
    np.testing.assert_array_equal(k1, np.asarray(model(t, key=jax.random.key(1))))


def test_scan_and_unrolled_agree_and_share_parameters():
    scanned = init_model(TINY)
    unrolled = init_model(TINY.replace(scan_layers=False))
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))  # noqa: E731
    assert shapes(scanned) == shapes(unrolled)
    np.testing.assert_allclose(scanned(tokens()), unrolled(tokens()), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_does_not_change_values_or_gradients(policy):
    def loss(model, t):
        return jnp.mean(model(t) ** 2)

    base, remat = init_model(TINY), init_model(TINY.replace(remat=policy))
    g0 = nnx.grad(loss)(base, tokens())
    g1 = nnx.grad(loss)(remat, tokens())
    for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def _program_size(cfg):
    graphdef, state = nnx.split(abstract_model(cfg))

    def forward(state, t):
        return nnx.merge(graphdef, state)(t)

    t = jax.ShapeDtypeStruct((B, T), jnp.int32)
    return len(jax.jit(forward).lower(state, t).as_text())


def test_scanned_program_does_not_grow_with_depth():
    scan2, scan8 = _program_size(TINY.replace(n_layers=2)), _program_size(TINY.replace(n_layers=8))
    unroll2 = _program_size(TINY.replace(n_layers=2, scan_layers=False))
    unroll8 = _program_size(TINY.replace(n_layers=8, scan_layers=False))
    # The unrolled program must grow (otherwise this test could not fail), the scanned one not.
    assert unroll8 > 2.5 * unroll2, (unroll2, unroll8)
    assert scan8 < 1.05 * scan2, (scan2, scan8)


@pytest.mark.parametrize("extra", [
    {},
    {"n_kv_heads": 1},
    {"attention_pattern": ("local",), "local_window": 4},
    {"position": "alibi"},
    {"attn_scale": 1.0},
])
def test_fused_attention_matches_einsum_reference(extra):
    cfg = TINY.replace(**extra)
    fused = logits_of(cfg.replace(attention_impl="xla"))
    ref = logits_of(cfg.replace(attention_impl="einsum"))
    assert np.max(np.abs(fused - ref)) / np.max(np.abs(ref)) <= 1e-5


def test_local_window_masks_exactly_the_band():
    p = jnp.arange(6).reshape(1, 6)
    mask = np.asarray(attention.causal_mask(p, p, 3))[0]
    expected = np.array([[0 <= i - j < 3 for j in range(6)] for i in range(6)])
    np.testing.assert_array_equal(mask, expected)


def test_local_layers_forget_tokens_beyond_the_window():
    cfg = TINY.replace(attention_pattern=("local",), local_window=3, n_layers=1, position="none")
    model = init_model(cfg)
    t = tokens()
    t2 = t.at[:, 0].set((t[:, 0] + 1) % 97)
    a, b = np.asarray(model(t)), np.asarray(model(t2))
    # With one layer, position 3 and later cannot see position 0.
    np.testing.assert_array_equal(a[:, 3:], b[:, 3:])
    assert_differ(a[:, :3], b[:, :3])


def test_rotary_partial_leaves_the_tail_untouched():
    cfg = TINY.replace(position="rotary", rotary_dim=4)
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 8))
    y = positions.apply_rotary(x, jnp.arange(5).reshape(1, 5), cfg)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    np.testing.assert_array_equal(y[:, 0], x[:, 0])  # position 0 is the identity rotation
    assert np.max(np.abs(y[..., :4] - x[..., :4])) > 1e-2


def test_padded_vocabulary_never_wins():
    cfg = TINY.replace(vocab_pad_multiple=64)
    model = init_model(cfg)
    assert cfg.padded_vocab == 128
    # Make the padded rows dominate any dot product: they must still not win.
    table = model.embed.table
    table[...] = table[...].at[97:].set(100.0)
    padded = np.asarray(model.logits(tokens()))
    assert padded.shape == (B, T, 128)
    assert (padded.argmax(-1) < 97).all()
    probs = jax.nn.softmax(padded, axis=-1)
    assert float(jnp.max(probs[..., 97:])) == 0.0
    assert model(tokens()).shape == (B, T, 97)


@pytest.mark.parametrize("policy", ["float32", "bfloat16"])
def test_param_and_compute_dtypes_are_separate(policy):
    cfg = TINY.replace(compute_dtype="bfloat16", param_dtype=policy)
    model = init_model(cfg)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {x.dtype for x in leaves} == {jnp.dtype(policy)}
    out = model(tokens())
    assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
    # bfloat16 compute is close to, but not the same as, float32 compute.
    ref = logits_of(TINY.replace(param_dtype=policy))
    diff = np.max(np.abs(np.asarray(out) - ref))
    assert 0 < diff < 0.1 * np.max(np.abs(ref)) + 1e-2


LOGICAL_AXES = {"layers", "embed", "vocab", "position", "heads", "kv_heads", "head_dim", "mlp"}


@pytest.mark.parametrize("extra", [{}, {"tie_embeddings": False, "head_bias": True},
                                   {"activation": "swiglu", "norm": "rmsnorm", "embed_norm": True}])
def test_every_parameter_has_logical_axes(extra):
    state = nnx.state(abstract_model(TINY.replace(**extra)), nnx.Param)
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("axes")
        assert axes is not None, f"{path} has no logical axes"
        assert len(axes) == len(var.get_value().shape), (path, axes)
        assert set(axes) <= LOGICAL_AXES, (path, axes)
        assert (path[0] == "blocks") == (axes[0] == "layers"), (path, axes)


@pytest.mark.parametrize("changes,field", [
    ({"d_model": 42}, "d_model"),
    ({"position": "rotary", "rotary_dim": 5}, "rotary_dim"),
    ({"position": "rotary", "rotary_dim": 10}, "rotary_dim"),
    ({"n_kv_heads": 2}, "n_kv_heads"),
    ({"residual": "sandwich"}, "residual"),
    ({"attention_pattern": ("global", "banded")}, "attention_pattern"),
    ({"activation": "gelu_new"}, "activation"),
    ({"embed_dropout": 1.0}, "embed_dropout"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TINY.replace(**changes)


def test_unknown_field_suggests_the_nearest():
    with pytest.raises(ConfigError, match="n_layers"):
        TINY.replace(n_layer=3)


def test_config_round_trips_through_plain_data():
    from gptjax.config import from_dict

    cfg = TINY.replace(attention_pattern=("global", "local"))
    assert from_dict(ModelConfig, cfg.to_dict()) == cfg
    assert dataclasses.asdict(cfg)["attention_pattern"] == ("global", "local")
