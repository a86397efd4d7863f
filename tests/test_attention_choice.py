"""Which attention path runs, and why: cuDNN flash attention where it can, the reasons where not.

cuDNN itself needs an NVIDIA GPU; on CPU these tests pin the choice for every case and run the
exact call form the cuDNN path uses (the kernel's causal flag instead of a mask) through XLA.
"""

import jax
import numpy as np
import pytest

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import attention, kernels
from gptjax.model.gpt import KVCache, init_model
from gptjax.model.kernels import Choice, Kernels

GPU = dict(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
FLASHABLE = ModelConfig(vocab_size=97, max_seq_len=16, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                        compute_dtype="bfloat16")


def pick(cfg=FLASHABLE, aligned=True, needs_dropout=False, **device):
    """The path one call takes: the kernels chosen for the device, then the call's own mask and dropout."""
    chosen = Kernels(kernels.choose_attention(cfg, **(device or GPU)))
    return chosen.attention_for(plain_causal=aligned, dropout=needs_dropout)


def test_auto_takes_cudnn_on_an_nvidia_gpu_when_model_and_call_allow():
    assert pick().impl == "cudnn"
    assert pick(FLASHABLE.replace(n_kv_heads=1)).impl == "cudnn"


@pytest.mark.parametrize("change, device, aligned, reason", [
    ({"compute_dtype": "float32"}, GPU, True, "needs compute_dtype bfloat16, not float32"),
    ({"d_model": 640, "n_heads": 4}, GPU, True, "multiple of 8 up to 128, not 160"),
    ({"attention_pattern": ("global", "local")}, GPU, True, "banded (local) layers"),
    ({"position": "alibi"}, GPU, True, "ALiBi adds a dense"),
    ({}, GPU, False, "a KV cache, packed segments or given positions"),
    ({}, dict(platform="gpu", device_kind="AMD Instinct MI300X"), True,
     "NVIDIA GPUs only (this device: gpu 'AMD Instinct MI300X')"),
])
def test_auto_falls_back_to_xla_and_says_why(change, device, aligned, reason):
    choice = pick(FLASHABLE.replace(**change), aligned=aligned, **device)
    assert choice.impl == "xla" and reason in choice.reason, choice


def test_cpu_dropout_and_explicit_choices():
    assert pick(platform="cpu", device_kind="cpu").impl == "einsum"
    assert pick(FLASHABLE.replace(attn_dropout=0.1), needs_dropout=True).impl == "einsum"
    assert pick(FLASHABLE.replace(attention_impl="xla")).impl == "xla"
    assert pick(FLASHABLE.replace(attention_impl="cudnn")).impl == "cudnn"
    # A decode step cannot use the causal flag: explicit cudnn runs it on XLA and says so.
    assert "KV cache" in pick(FLASHABLE.replace(attention_impl="cudnn"), aligned=False).reason


def test_explicit_cudnn_that_cannot_run_is_refused_with_the_reasons():
    expected = (r"attention_impl = 'cudnn' cannot run here: cuDNN runs on NVIDIA GPUs only \(this device: cpu "
                r"'cpu'\); cuDNN flash attention needs compute_dtype")
    with pytest.raises(ConfigError, match=expected):
        pick(FLASHABLE.replace(attention_impl="cudnn", compute_dtype="float32"), platform="cpu", device_kind="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_the_causal_flag_form_equals_the_masked_reference(kv_heads):
    b, t, n, h = 2, 11, 4, 8
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, nh, h)) for i, nh in enumerate((n, kv_heads, kv_heads)))
    p = np.broadcast_to(np.arange(t), (b, t))
    mask = attention.causal_mask(p, p, attention.GLOBAL_WINDOW)
    ref = attention.reference_attention(q, k, v, mask_BxTxS=mask, bias_BxNxTxS=None, scale=0.3)
    flag = attention.fused_attention(q, k, v, mask_BxTxS=None, bias_BxNxTxS=None, scale=0.3, implementation=None,
                                     causal=True)
    np.testing.assert_allclose(np.asarray(flag), np.asarray(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_model_runs_the_causal_form_only_where_the_mask_is_plain_causal(monkeypatch):
    """The cuDNN branch with XLA standing in for the kernel: equal logits, and every call that has
    a cache, segments or given positions runs another path (else on a GPU it would attend with the
    wrong mask). The kernels are a value the model is built with: no device is consulted."""
    seen = []
    real_fused = attention.fused_attention

    def fused(*a, implementation, causal=False, **kw):
        seen.append(causal)
        return real_fused(*a, implementation=None, causal=causal, **kw)

    cfg = FLASHABLE.replace(compute_dtype="float32")
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 97)
    ref = np.asarray(init_model(cfg.replace(attention_impl="einsum"), 0)(tokens))
    monkeypatch.setattr(attention, "fused_attention", fused)
    model = init_model(cfg, 0, Kernels(Choice("cudnn", "test")))
    flash = np.asarray(model(tokens))
    assert seen and all(seen)
    np.testing.assert_allclose(flash, ref, rtol=1e-5, atol=1e-5)
    seen.clear()
    positions = np.broadcast_to(np.arange(12), (2, 12))
    model.logits(tokens, positions, segments_BxT=np.zeros((2, 12), np.int32))
    model(tokens, positions)
    model.decode(tokens, positions, KVCache.empty(cfg, 2, 16))
    assert len(seen) >= 3 and not any(seen)


def test_kernels_are_chosen_for_the_device_given_not_the_one_traced_on():
    """A plan for an NVIDIA GPU made on this CPU machine gets the GPU's kernels; q/k/v fuse
    everywhere unless the caller says not to."""

    class Device:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    gpu = kernels.for_device(FLASHABLE, Device())
    assert gpu.attention.impl == "cudnn" and gpu.fuse_qkv
    cpu = kernels.for_device(FLASHABLE, jax.devices()[0])
    assert cpu.attention.impl == "einsum" and cpu.fuse_qkv
    assert not kernels.for_device(FLASHABLE, jax.devices()[0], fuse_qkv=False).fuse_qkv


def test_a_single_query_keeps_attention_dropout():
    """The one-query form (decoding) must not drop the probabilities' dropout when a step has T = 1."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s, dtype=np.float32) for s in ((2, 1, 4, 8), (2, 5, 4, 8), (2, 5, 4, 8)))
    mask = np.ones((2, 1, 5), bool)
    common = dict(mask_BxTxS=mask, bias_BxNxTxS=None, scale=8**-0.5)
    plain = attention.reference_attention(q, k, v, **common)
    dropped = attention.reference_attention(q, k, v, probs_dropout=0.5, key=jax.random.key(0), **common)
    # Three copies of the query take the general path: its first row is the same function.
    dense = attention.reference_attention(np.repeat(q, 3, axis=1), k, v,
                                          **{**common, "mask_BxTxS": np.repeat(mask, 3, axis=1)})
    np.testing.assert_allclose(np.asarray(plain), np.asarray(dense)[:, :1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(plain), np.asarray(dropped))
