"""Hugging Face interchange: logit parity with transformers for every supported family, exact
export back to transformers, lossless round trips, and refusal of unsafe or unrepresentable input.

References are tiny random transformers models with awkward sizes (widths 40-80, 4-6 heads,
vocabulary 97, 13 positions), every parameter drawn at random so that biases and norm scales count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from helpers import EXPERIMENTS, reference  # noqa: E402
from helpers import gptjax_cli as gptjax

from gptjax.config import ConfigError, ModelConfig
from gptjax.interop import hf, hf_config, native, pretrained
from gptjax.model import positions as pos_lib
from gptjax.model.gpt import abstract_model, init_model
from gptjax.store import tensor_files
from gptjax.store.tensor_files import CheckpointError

pytestmark = pytest.mark.torch
torch = reference("torch")  # the optional "hf" extra: references only, gptjax never imports it
transformers = reference("transformers")

TOL = 1e-5  # relative logit error in float32 (STYLE.md); never loosen it to make a test pass
VOCAB, BATCH, SEQ = 97, 2, 13

CASES = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=40, n_layer=2, n_head=5, bos_token_id=0, eos_token_id=0),
    "gpt_neo": lambda: transformers.GPTNeoConfig(
        vocab_size=VOCAB, max_position_embeddings=16, hidden_size=40, num_layers=3, num_heads=5,
        intermediate_size=56, window_size=5, bos_token_id=0, eos_token_id=0,
        attention_types=[[["global", "local"], 1], [["local"], 1]]),
    "gptj": lambda: transformers.GPTJConfig(
        vocab_size=VOCAB, n_positions=16, n_embd=40, n_layer=2, n_head=5, rotary_dim=4, bos_token_id=0,
        eos_token_id=0),
    # head_dim 16, so a quarter rotates 4 features: with only 2, NeoX and GPT-J layouts coincide.
    "gpt_neox_parallel": lambda: transformers.GPTNeoXConfig(
        vocab_size=VOCAB, max_position_embeddings=16, hidden_size=80, num_hidden_layers=2, num_attention_heads=5,
        intermediate_size=72, rotary_pct=0.25, use_parallel_residual=True),
    "gpt_neox_sequential": lambda: transformers.GPTNeoXConfig(
        vocab_size=VOCAB, max_position_embeddings=16, hidden_size=80, num_hidden_layers=2, num_attention_heads=5,
        intermediate_size=72, rotary_pct=0.25, use_parallel_residual=False),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=16, hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=72, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    "bloom": lambda: transformers.BloomConfig(vocab_size=VOCAB, hidden_size=48, n_layer=2, n_head=6),
}
# What each family's parity depends on, changed in our config alone: each change must move the
# logits well beyond TOL (10x), or the parity test would not be checking that fact.
FACTS = {
    "gpt2": [dict(attn_scale=1.0), dict(activation="gelu")],
    "gpt_neo": [dict(attention_pattern=("global",)), dict(attn_scale=None)],
    "gptj": [dict(rotary_layout="neox"), dict(rotary_dim=8)],
    "gpt_neox_parallel": [dict(rotary_pct=1.0), dict(rotary_layout="gptj"), dict(residual="pre_ln")],
    "gpt_neox_sequential": [dict(rotary_pct=0.5), dict(residual="parallel_two_ln")],
    "llama": [dict(rotary_base=10000.0), dict(rotary_layout="gptj")],
    "bloom": [dict(position="none")],
}
PARITY: dict[str, dict[str, float]] = {}


@dataclasses.dataclass
class Reference:
    name: str
    directory: pathlib.Path
    torch_model: torch.nn.Module
    logits: np.ndarray


def _tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (BATCH, SEQ))


def _randomise(model: torch.nn.Module) -> None:
    # HF initialises biases to 0 and norm scales to 1, which would hide a mis-mapped bias.
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = p.ndim == 1 and name.endswith("weight")
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if is_scale else 0.1 * torch.randn_like(p))


def _torch_logits(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(_tokens())).logits.numpy()


def _logits(model) -> np.ndarray:
    return np.asarray(model(jnp.asarray(_tokens())))


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _check_nontrivial(ref: np.ndarray) -> None:
    assert np.abs(ref).max() > 0.1, "reference logits are ~0: the comparison would prove nothing"
    assert ref.std(axis=-1).min() > 1e-3, "reference logits are constant over the vocabulary"
    assert np.abs(np.diff(ref, axis=1)).max() > 1e-3, "reference logits do not vary with position"


def _params(model) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def _assert_params_identical(a, b) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]), f"parameter {k} differs"


def _hf_from_pretrained(path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"transformers reported {problems} loading {path}"
    return model.eval()


def _save_hf(model: torch.nn.Module, path: pathlib.Path, **kwargs) -> pathlib.Path:
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path


@pytest.fixture(scope="module", autouse=True)
def parity_report(request):
    """Print the measured errors after the module, past output capture, so every run records them."""
    yield
    lines = [f"  {name:22s} " + "  ".join(f"{k} {v:.2e}" for k, v in errs.items())
             for name, errs in sorted(PARITY.items())]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\nrelative logit error, max|diff| / max|reference| (import/<attention>: gptjax vs "
              "transformers; export: transformers on our export vs the original):\n" + "\n".join(lines))


@pytest.fixture(scope="module", params=list(CASES))
def reference(request, tmp_path_factory) -> Reference:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CASES[request.param](), attn_implementation="eager")
    _randomise(model)
    model.eval()
    directory = _save_hf(model, tmp_path_factory.mktemp(request.param) / "hf")
    return Reference(request.param, directory, model, _torch_logits(model))


@pytest.mark.slow
@pytest.mark.parametrize("attention_impl", ["einsum", "xla"])
def test_logits_match_transformers(reference, attention_impl):
    _check_nontrivial(reference.logits)
    err = _rel_err(_logits(hf.load_hf(reference.directory, attention_impl=attention_impl)), reference.logits)
    PARITY.setdefault(reference.name, {})[f"import/{attention_impl}"] = err
    assert err <= TOL, f"{reference.name} ({attention_impl}): relative logit error {err:.3e} > {TOL}"


@pytest.mark.slow
def test_parity_depends_on_family_facts(reference):
    model = hf.load_hf(reference.directory)
    for fact in FACTS[reference.name]:
        changed = model.cfg.replace(**fact)
        other = nnx.merge(nnx.graphdef(abstract_model(changed)), nnx.state(model))
        err = _rel_err(_logits(other), reference.logits)
        assert err > 10 * TOL, f"{reference.name}: changing {fact} left logits within {err:.1e}"


def test_export_reloads_in_transformers_identically(reference, tmp_path):
    model = hf.load_hf(reference.directory)
    exported = _hf_from_pretrained(hf.export_hf(model, tmp_path / "export"))
    before, after = reference.torch_model.state_dict(), exported.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{reference.name}: exported {k} differs"
    _check_nontrivial(reference.logits)
    err = _rel_err(_torch_logits(exported), reference.logits)
    PARITY.setdefault(reference.name, {})["export"] = err
    assert err <= TOL


def test_gptjax_hf_gptjax_round_trip_is_bit_identical(reference, tmp_path):
    model = hf.load_hf(reference.directory)
    back = hf.load_hf(hf.export_hf(model, tmp_path / "export"))
    assert back.cfg == model.cfg
    _assert_params_identical(model, back)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "gptj", "gpt_neox_parallel", "llama", "bloom"])
def test_round_trip_from_random_init(name, tmp_path):
    cfg = hf_config.config_from_hf(CASES[name]().to_dict())
    model = _with_nonzero_biases(init_model(cfg, seed=1))
    back = hf.load_hf(hf.export_hf(model, tmp_path / "export"))
    assert hf_config.architecture(back.cfg) == hf_config.architecture(cfg)
    _assert_params_identical(model, back)


def _with_nonzero_biases(model):
    """gptjax initialises biases to zero, which an import reads as no biases (hf.model_config)."""
    state = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        if path[-1] == "bias":
            value = variable.get_value()
            variable.set_value(value + 0.01 * jnp.arange(1, value.size + 1, dtype=value.dtype).reshape(value.shape))
    nnx.update(model, state)
    return model


@pytest.mark.slow
def test_a_bias_free_run_exports_exactly(tmp_path):
    """A run of nanoGPT's bias-free config exports as gpt2 with zero biases: transformers computes
    its logits, AutoTokenizer its character ids, there is no out-of-vocabulary bos/eos id, and the
    export comes back as the bias-free model it was."""
    run, out = tmp_path / "run", tmp_path / "hf"
    gptjax("train", EXPERIMENTS / "shakespeare_char.yaml", "steps=3", "eval_every=3", "checkpoint_every=3",
           "--run-dir", run, "--no-progress", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    gptjax("convert", run, out, "--to", "hf")
    model = pretrained.from_pretrained(run)
    assert not (model.cfg.qkv_bias or model.cfg.out_bias or model.cfg.mlp_bias or model.cfg.norm_bias)
    exported = _hf_from_pretrained(out)
    assert exported.config.model_type == "gpt2"
    assert exported.config.bos_token_id is None and exported.config.eos_token_id is None
    biases = {k: v for k, v in exported.state_dict().items() if k.endswith(".bias") and ".attn.bias" not in k}
    assert biases and all(not v.any() for v in biases.values())
    tokens = np.random.default_rng(0).integers(0, 65, (2, 64))
    with torch.no_grad():
        ref = exported(torch.tensor(tokens)).logits.numpy()
    _check_nontrivial(ref)
    assert _rel_err(np.asarray(model(jnp.asarray(tokens))), ref) <= TOL
    text = "ROMEO:\nWhat light through yonder window breaks?"
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert auto.encode(text, add_special_tokens=False) == model.tokenizer.encode(text)
    back = hf.load_hf(out)
    assert hf_config.architecture(back.cfg) == hf_config.architecture(model.cfg)
    _assert_params_identical(model, back)


# ------------------------------------------------------------------------------------------------
# Vocabulary padding, sharding, prefixes, tied heads, dtypes
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Reference:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CASES["gpt2"](), attn_implementation="eager")
    _randomise(model)
    model.eval()
    return Reference("gpt2", _save_hf(model, tmp_path_factory.mktemp("gpt2") / "hf"), model, _torch_logits(model))


def test_vocab_padding_on_import(gpt2, tmp_path):
    model = hf.load_hf(gpt2.directory, vocab_pad_multiple=8)
    table = np.asarray(model.embed.table.get_value())
    assert table.shape == (104, 40) and not table[VOCAB:].any()
    _check_nontrivial(gpt2.logits)
    err = _rel_err(_logits(model), gpt2.logits)
    PARITY.setdefault("gpt2 (vocab padded)", {})["import/default"] = err
    assert err <= TOL
    padded_logits = np.asarray(model.logits(jnp.asarray(_tokens())))
    assert padded_logits.shape[-1] == 104 and (padded_logits.argmax(-1) < VOCAB).all()
    back = hf.load_hf(hf.export_hf(model, tmp_path / "export"), vocab_pad_multiple=8)
    _assert_params_identical(model, back)


def test_sharded_index_loading(gpt2, tmp_path):
    directory = _save_hf(gpt2.torch_model, tmp_path / "sharded", max_shard_size="20KB")
    assert (directory / tensor_files.INDEX_FILE).exists() and not (directory / tensor_files.SINGLE_FILE).exists()
    assert len(set(json.loads((directory / tensor_files.INDEX_FILE).read_text())["weight_map"].values())) > 1
    _assert_params_identical(hf.load_hf(directory), hf.load_hf(gpt2.directory))


def test_base_model_checkpoint_without_prefix(tmp_path):
    torch.manual_seed(0)
    lm = transformers.AutoModelForCausalLM.from_config(CASES["gpt_neox_sequential"]())
    _randomise(lm)
    lm.config.tie_word_embeddings = True  # a base model has no head, so only a tied one can be rebuilt
    _save_hf(lm.gpt_neox, tmp_path / "base")
    names = safetensors.numpy.load_file(tmp_path / "base" / tensor_files.SINGLE_FILE).keys()
    assert not any(n.startswith("gpt_neox.") for n in names)
    model = hf.load_hf(tmp_path / "base")
    np.testing.assert_array_equal(np.asarray(model.embed.table.get_value()),
                                  lm.gpt_neox.embed_in.weight.detach().numpy())


def _rewrite_tensors(directory: pathlib.Path, change) -> None:
    path = directory / tensor_files.SINGLE_FILE
    tensors = dict(safetensors.numpy.load_file(path))
    change(tensors)
    tensor_files.write_safetensors(path, tensors)


def _copy_hf(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    dst.mkdir()
    for name in (hf_config.CONFIG_FILE, tensor_files.SINGLE_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_tied_head_may_be_present_if_equal(gpt2, tmp_path):
    directory = _copy_hf(gpt2.directory, tmp_path / "tied")
    _rewrite_tensors(directory, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].copy()}))
    _assert_params_identical(hf.load_hf(directory), hf.load_hf(gpt2.directory))
    _rewrite_tensors(directory, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1.0}))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from transformer.wte.weight"):
        hf.load_hf(directory)


def test_unexpected_and_missing_tensors_are_named(gpt2, tmp_path):
    directory = _copy_hf(gpt2.directory, tmp_path / "extra")
    _rewrite_tensors(directory, lambda t: t.update({"transformer.h.0.attn.extra": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected transformer\.h\.0\.attn\.extra"):
        hf.load_hf(directory)
    directory = _copy_hf(gpt2.directory, tmp_path / "missing")
    _rewrite_tensors(directory, lambda t: t.pop("transformer.h.1.ln_2.bias"))
    with pytest.raises(CheckpointError, match=r"missing transformer\.h\.1\.ln_2\.bias"):
        hf.load_hf(directory)


def test_known_buffers_are_ignored(gpt2, tmp_path):
    directory = _copy_hf(gpt2.directory, tmp_path / "buffers")
    _rewrite_tensors(directory, lambda t: t.update({"transformer.h.0.attn.bias": np.ones((1, 1, 4, 4), np.float32),
                                                    "transformer.h.0.attn.masked_bias": np.ones((), np.float32)}))
    _assert_params_identical(hf.load_hf(directory), hf.load_hf(gpt2.directory))


def test_bfloat16_checkpoint_loads_as_bfloat16(gpt2, tmp_path):
    directory = _copy_hf(gpt2.directory, tmp_path / "bf16")
    _rewrite_tensors(directory, lambda t: t.update({k: v.astype(jnp.bfloat16) for k, v in t.items()}))
    model = hf.load_hf(directory)
    assert model.cfg.param_dtype == "bfloat16"
    back = hf.load_hf(hf.export_hf(model, tmp_path / "export"))
    _assert_params_identical(model, back)


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------

class _Tripwire:
    """Unpickling this creates `marker`: proof that someone opened the pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_only_directory_is_refused_unopened(gpt2, tmp_path, monkeypatch):
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / hf_config.CONFIG_FILE).write_bytes((gpt2.directory / hf_config.CONFIG_FILE).read_bytes())
    marker = tmp_path / "unpickled"
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(str(marker))))

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle checkpoint was opened")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*can execute arbitrary code.*safe_serialization=True"):
        pretrained.from_pretrained(directory)
    assert not marker.exists()


def _sharded_copy(gpt2: Reference, tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "sharded"
    directory.mkdir()
    (directory / hf_config.CONFIG_FILE).write_bytes((gpt2.directory / hf_config.CONFIG_FILE).read_bytes())
    tensors = safetensors.numpy.load_file(gpt2.directory / tensor_files.SINGLE_FILE)
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, shard_names in shards.items():
        tensor_files.write_safetensors(directory / shard, {n: tensors[n] for n in shard_names})
    weight_map = {n: s for s, shard_names in shards.items() for n in shard_names}
    (directory / tensor_files.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def test_hand_written_index_loads(gpt2, tmp_path):
    _assert_params_identical(hf.load_hf(_sharded_copy(gpt2, tmp_path)), hf.load_hf(gpt2.directory))


@pytest.mark.parametrize("bad_name", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../x.safetensors"])
def test_escaping_shard_names_are_refused(gpt2, tmp_path, bad_name):
    directory = _sharded_copy(gpt2, tmp_path)
    index = json.loads((directory / tensor_files.INDEX_FILE).read_text())
    index["weight_map"]["transformer.wte.weight"] = bad_name
    (directory / tensor_files.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"file name '{bad_name}' is refused"):
        hf.load_hf(directory)


@pytest.mark.parametrize("linked", [hf_config.CONFIG_FILE, tensor_files.INDEX_FILE, "model-00001-of-00002.safetensors"])
def test_symlinks_are_refused(gpt2, tmp_path, linked):
    directory = _sharded_copy(gpt2, tmp_path)
    target = tmp_path / ("real-" + linked)
    os.rename(directory / linked, target)
    os.symlink(target, directory / linked)
    with pytest.raises(CheckpointError, match=f"{linked} is a symbolic link"):
        hf.load_hf(directory)


def test_symlink_inside_native_directory_is_refused(tmp_path):
    directory = native.save_pretrained(init_model(_tiny_config()), tmp_path / "native")
    some_file = next(p for p in (directory / native.PARAMS_DIR).rglob("*") if p.is_file())
    os.rename(some_file, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", some_file)
    with pytest.raises(CheckpointError, match="is a symbolic link"):
        pretrained.from_pretrained(directory)


def test_unsupported_model_type_names_the_field():
    with pytest.raises(ConfigError, match=r"model_type = 't5' is not supported; accepted: gpt2, gpt_neo"):
        hf_config.config_from_hf({"model_type": "t5"})


@pytest.mark.parametrize("name, change, field", [
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx = True"),
    ("gpt2", {"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn = True"),
    ("gpt2", {"activation_function": "quick_gelu"}, "activation_function = 'quick_gelu'"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope_type = 'linear'"),
    ("gpt_neox_parallel", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_type = 'dynamic'"),
    ("bloom", {"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
])
def test_unrepresentable_options_are_refused_before_weights(name, change, field, tmp_path):
    given = {**CASES[name]().to_dict(), **change}
    with pytest.raises(ConfigError, match=field):
        hf_config.config_from_hf(given)
    # The weights file is garbage: the config must be refused before anything reads it.
    (tmp_path / hf_config.CONFIG_FILE).write_text(json.dumps(given))
    (tmp_path / tensor_files.SINGLE_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=field):
        hf.load_hf(tmp_path)


def test_hf_defaults_fill_omitted_keys():
    full = CASES["gpt_neox_parallel"]().to_dict()
    minimal = {k: full[k] for k in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                                    "num_attention_heads", "intermediate_size", "max_position_embeddings")}
    cfg = hf_config.config_from_hf(minimal)
    assert cfg.rotary_pct == 0.25 and cfg.residual == "parallel_two_ln" and not cfg.tie_embeddings


def _tiny_config(**changes) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, max_seq_len=16, d_model=40, n_layers=2, n_heads=5, **changes)


@pytest.mark.parametrize("model_type, changes, field", [
    ("gpt2", dict(attention_pattern=("global", "local"), local_window=4), "attention_pattern"),
    ("gpt2", dict(position="rotary"), "position"),
    ("gpt_neox", dict(position="rotary", rotary_layout="gptj"), "rotary_layout"),
    ("gptj", dict(position="rotary", rotary_dim=4, rotary_layout="gptj", residual="parallel_one_ln",
                  qkv_bias=False, out_bias=False, tie_embeddings=False, head_bias=True, rotary_base=500.0),
     "rotary_base"),
    ("llama", dict(position="rotary", norm="rmsnorm", activation="gelu_tanh"), "activation"),
])
def test_lossy_export_is_refused(model_type, changes, field, tmp_path):
    model = init_model(_tiny_config(**changes))
    with pytest.raises(ConfigError, match=f"ModelConfig.{field} = .* cannot be exported as {model_type}"):
        hf.export_hf(model, tmp_path / "out", model_type=model_type)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_export_without_model_type_picks_an_exact_family():
    assert hf_config.config_to_hf(_tiny_config())["model_type"] == "gpt2"
    local = _tiny_config(attention_pattern=("global", "local"), local_window=4, attn_scale=1.0, qkv_bias=False)
    assert hf_config.config_to_hf(local)["model_type"] == "gpt_neo"
    with pytest.raises(ConfigError, match="no Hugging Face model type represents"):
        hf_config.config_to_hf(_tiny_config(residual="post_ln"))


def test_load_overrides_are_limited(gpt2):
    with pytest.raises(ConfigError, match="ModelConfig.d_model cannot be overridden"):
        hf.load_hf(gpt2.directory, d_model=48)


# ------------------------------------------------------------------------------------------------
# Native format and conversion
# ------------------------------------------------------------------------------------------------

def test_save_pretrained_round_trip_is_bit_identical(tmp_path):
    model = init_model(_tiny_config(vocab_pad_multiple=8, tie_embeddings=False, head_bias=True), seed=3)
    directory = native.save_pretrained(model, tmp_path / "native")
    assert sorted(p.name for p in directory.iterdir()) == [native.NATIVE_CONFIG, native.PARAMS_DIR]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    back = pretrained.from_pretrained(directory)
    assert back.cfg == model.cfg
    _assert_params_identical(model, back)
    with pytest.raises(FileExistsError, match="already exists"):
        native.save_pretrained(model, directory)


def test_from_pretrained_says_what_it_looked_for(tmp_path):
    with pytest.raises(CheckpointError, match="holds no gptjax_config.json or config.json"):
        pretrained.from_pretrained(tmp_path)


def test_convert_both_directions(gpt2, tmp_path):
    native_dir = pretrained.convert(gpt2.directory, tmp_path / "native", to="gptjax")
    assert (native_dir / native.NATIVE_CONFIG).exists()
    _assert_params_identical(pretrained.from_pretrained(native_dir), hf.load_hf(gpt2.directory))
    back = pretrained.convert(native_dir, tmp_path / "hf", to="hf")
    _check_nontrivial(gpt2.logits)
    assert _rel_err(_torch_logits(_hf_from_pretrained(back)), gpt2.logits) <= TOL


def test_alibi_parity_needs_blooms_extra_slopes(tmp_path, monkeypatch):
    """Six heads: the slopes beyond the largest power of two follow BLOOM's interleaving rule; the
    plain geometric sequence 2^(-8i/n) must not also pass, or the BLOOM test would not check it."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CASES["bloom"](), attn_implementation="eager")
    _randomise(model)
    ref = _torch_logits(model.eval())
    directory = _save_hf(model, tmp_path / "bloom")
    n = 6
    monkeypatch.setattr(pos_lib, "alibi_slopes",
                        lambda heads: np.asarray([2.0 ** (-8.0 * (i + 1) / n) for i in range(heads)], np.float32))
    assert _rel_err(_logits(hf.load_hf(directory)), ref) > 10 * TOL
