"""The Pallas splash attention path (attention_impl: pallas, auto on TPUs): jax's TPU kernel run by
Pallas's interpreter on CPU must equal the einsum reference, forward and gradients, for every
case the path accepts, one device or sharded under shard_map; and which path runs on a TPU, why."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import require_libtpu

from gptjax.config import ConfigError, MeshConfig, ModelConfig, TrainConfig, from_dict
from gptjax.model import kernels
from gptjax.model.gpt import GPT
from gptjax.model.kernels import Choice, Kernels
from gptjax.runtime import sharding
from gptjax.runtime.splash import SplashAttention
from gptjax.tools import plan
from gptjax.training import trainer

TPU = dict(platform="tpu", device_kind="TPU v5 lite")
# 100 positions: not a multiple of the kernel's 128, so the padding is exercised too.
B, T = 2, 100


def cfg_of(head_dim=64, heads=2, kv_heads=None, dtype="float32", **extra):
    return ModelConfig(vocab_size=61, max_seq_len=T, d_model=heads * head_dim, n_layers=2, n_heads=heads,
                       n_kv_heads=kv_heads, d_ff=64, compute_dtype=dtype, **extra)


def loss_and_grads(cfg, kern, seed=0):
    model = GPT(cfg, rngs=nnx.Rngs(params=seed), kernels=kern)
    graphdef, state = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)

    def loss(state):
        logits = nnx.merge(graphdef, state)(tokens)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0]), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return np.asarray(value), np.asarray(logits, np.float32), jax.tree.map(np.asarray, grads)


def pallas(mesh=None):
    return Kernels(Choice("pallas", "test"), pallas=SplashAttention(mesh, interpret=True))


def assert_same(cfg, kern, rtol):
    want = loss_and_grads(cfg, kernels.REFERENCE)
    got = loss_and_grads(cfg, kern)
    scale = np.max(np.abs(want[1]))
    assert np.max(np.abs(got[1] - want[1])) <= rtol * scale
    np.testing.assert_allclose(got[0], want[0], rtol=rtol)
    # Gradients against the largest one: the key bias's is zero in exact arithmetic (a constant
    # added to every logit of a query), so only rounding noise is there to compare on its own scale.
    grad_scale = max(np.max(np.abs(w)) for w in jax.tree.leaves(want[2]))
    for g, w in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2])):
        assert np.max(np.abs(g - w)) <= rtol * grad_scale, (g.shape, np.max(np.abs(g - w)), grad_scale)


CASES = {
    "causal-64": cfg_of(64),
    "causal-128": cfg_of(128),
    "gqa": cfg_of(64, heads=4, kv_heads=2),
    "mqa": cfg_of(64, heads=4, kv_heads=1),
    "banded": cfg_of(64, attention_pattern=("global", "local"), local_window=9),  # GPT-Neo's alternation
    "rotary": cfg_of(64, position="rotary"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_splash_equals_the_einsum_reference_forward_and_gradients(name):
    assert_same(CASES[name], pallas(), rtol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("head_dim", [64, 128])
def test_splash_in_bfloat16_stays_within_bfloat16_rounding(head_dim):
    assert_same(cfg_of(head_dim, dtype="bfloat16"), pallas(), rtol=3e-2)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_cfg, kv_heads", [
    (MeshConfig(data=2, fsdp=2, tensor=2), 2),
    (MeshConfig(data=1, fsdp=4, tensor=2), 1),  # MQA: one key head cannot split over tensor
])
def test_splash_under_shard_map_equals_the_reference(mesh_cfg, kv_heads):
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:8])
    cfg = cfg_of(64, heads=4, kv_heads=kv_heads)
    assert_same(cfg, Kernels(Choice("pallas", "test"), place=sharding.Activations(mesh),
                             pallas=SplashAttention(mesh, interpret=True)), rtol=2e-5)


def test_shard_map_keeps_q_k_v_where_they_are():
    """Each device attends over its own rows and heads: the kernel's program gathers nothing."""
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    attend = SplashAttention(mesh, interpret=True)
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None))
    q = jax.ShapeDtypeStruct((4, 128, 4, 64), jnp.float32, sharding=spec)
    text = jax.jit(lambda q, k, v: attend(q, k, v, window=2**30, windows=(2**30,), scale=0.125)).lower(
        q, q, q).compile().as_text()
    for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
        assert op not in text, op


@pytest.mark.slow
@pytest.mark.parametrize("topology, mesh, model", [
    ("v5e:2x4", {"fsdp": 8}, {}),
    ("v5p:2x2x1", {"data": 2, "tensor": 2}, {"n_kv_heads": 2, "attention_pattern": ["global", "local"],
                                             "local_window": 64}),
], ids=["v5e-fsdp", "v5p-tensor-banded-gqa"])
def test_the_train_step_compiles_for_tpu_with_the_kernel_in_the_program(topology, mesh, model):
    """The TPU compiler (libtpu, on this CPU machine) compiles the whole train step with Mosaic's
    kernel calls in it: one forward and one fused backward per distinct window."""
    require_libtpu()
    cfg = from_dict(TrainConfig, {"model": {"vocab_size": 512, "max_seq_len": 256, "d_model": 256, "n_layers": 2,
                                            "n_heads": 4, "d_ff": 512, "compute_dtype": "bfloat16", **model},
                                  "data": {"batch_size": 16}, "mesh": mesh})
    tr = trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh, plan.tpu_devices(topology)))
    assert tr.kernels.attention.impl == "pallas"
    compiled, _ = plan.compile_step(tr)
    windows = len(set(cfg.model.layer_kinds))
    assert compiled.as_text().count('custom_call_target="tpu_custom_call"') == 2 * windows


def pick(cfg, **device):
    return kernels.choose_attention(cfg, **(device or TPU))


def test_auto_takes_the_pallas_kernel_on_tpu_for_causal_banded_and_grouped_models():
    for cfg in CASES.values():
        assert pick(cfg).impl == "pallas"
    alibi = pick(cfg_of(64, position="alibi"))
    assert alibi.impl == "xla" and "ALiBi adds a bias" in alibi.reason
    # A call whose mask is not plain causal (decoding, packed documents) runs on XLA and says why.
    chosen = Kernels(pick(cfg_of(64)), pallas=SplashAttention())
    assert chosen.attention_for(plain_causal=False, dropout=False).impl == "xla"
    assert chosen.attention_for(plain_causal=True, dropout=True).impl == "einsum"
    assert chosen.attention_for(plain_causal=True, dropout=False).impl == "pallas"
    assert "no Pallas kernel" in Kernels(pick(cfg_of(64))).attention_for(plain_causal=True, dropout=False).reason


def test_explicit_pallas_that_cannot_run_is_refused_with_every_reason():
    with pytest.raises(ConfigError, match=r"attention_impl = 'pallas' cannot run here: the Pallas attention kernel "
                                          r"runs on TPUs only \(this device: cpu\); ALiBi adds a bias"):
        pick(cfg_of(64, position="alibi", attention_impl="pallas"), platform="cpu", device_kind="cpu")
