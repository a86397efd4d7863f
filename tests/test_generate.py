"""Generation with the KV cache: cached logits equal a full recomputation at every step for every
position type, local windows (past the window) and the parallel residual; greedy output equals
transformers' `generate`; sampling options; the same tokens on 8 devices as on 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import reference

from gptjax import generation as gen
from gptjax.config import ModelConfig
from gptjax.model.gpt import init_model

TOL = 1e-5  # float32, relative to the largest logit
CASES = {
    "learned": dict(),
    "rotary-neox-partial": dict(position="rotary", rotary_pct=0.5, residual="parallel_two_ln"),
    "rotary-gptj": dict(position="rotary", rotary_dim=4, rotary_layout="gptj", residual="parallel_one_ln"),
    "alibi": dict(position="alibi", embed_norm=True),
    "local-window": dict(attention_pattern=("global", "local"), local_window=5),  # prompt + new > 5
    "gqa-unrolled": dict(n_kv_heads=1, position="rotary", scan_layers=False),
    "padded-vocab": dict(vocab_pad_multiple=64),
}


def model_for(case):
    cfg = ModelConfig(vocab_size=97, max_seq_len=64, d_model=40, n_layers=2, n_heads=5, **CASES[case])
    return init_model(cfg, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_cached_logits_equal_full_recomputation_at_every_step(case):
    model = model_for(case)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 1]]  # different lengths share the batch (left padding)
    out, scores = gen.generate(model, prompts, 12, temperature=1.0, top_k=20, seed=1, eos_token_id=None,
                               return_scores=True)
    assert scores.shape == (2, 12, 97)
    for i, (prompt, seq) in enumerate(zip(prompts, out)):
        full = np.asarray(model(jnp.asarray([seq[:-1]])))[0]
        expected = full[len(prompt) - 1:]
        err = np.max(np.abs(scores[i] - expected)) / np.max(np.abs(expected))
        assert err < TOL, (case, i, err)
    # The check is not vacuous: a cache that forgot one slot would disagree.
    assert np.max(np.abs(scores[0, -1] - full[0])) > 1e-3


@pytest.mark.slow
def test_greedy_equals_step_by_step_argmax_and_padding_never_wins():
    model = model_for("padded-vocab")
    out = gen.generate(model, [[1, 2, 3]], 10, eos_token_id=None)[0]
    seq = [1, 2, 3]
    for _ in range(10):
        seq.append(int(jnp.argmax(model(jnp.asarray([seq]))[0, -1])))
    assert out == seq and max(out) < 97


@pytest.mark.slow
def test_sampling_is_reproducible_by_seed_and_top_k_1_is_greedy():
    model = model_for("learned")
    a = gen.generate(model, [[1, 2]], 8, temperature=1.0, seed=5, eos_token_id=None)
    b = gen.generate(model, [[1, 2]], 8, temperature=1.0, seed=5, eos_token_id=None)
    c = gen.generate(model, [[1, 2]], 8, temperature=1.0, seed=6, eos_token_id=None)
    assert a == b and a != c
    greedy = gen.generate(model, [[1, 2]], 8, eos_token_id=None)
    assert gen.generate(model, [[1, 2]], 8, temperature=0.7, top_k=1, seed=9, eos_token_id=None) == greedy
    several = gen.generate(model, [[1, 2], [4]], 6, temperature=1.0, num_return_sequences=3, eos_token_id=None)
    assert len(several) == 6 and all(s[:2] == [1, 2] for s in several[:3]) and several[3][0] == 4


@pytest.mark.slow
def test_no_repeat_ngram_and_repetition_penalty_and_eos():
    model = model_for("learned")
    plain = gen.generate(model, [[1, 2]], 20, eos_token_id=None)[0]
    bigrams = list(zip(plain, plain[1:]))
    assert len(set(bigrams)) < len(bigrams), "the greedy output must repeat for the ban to be tested"
    banned = gen.generate(model, [[1, 2]], 20, no_repeat_ngram_size=2, eos_token_id=None)[0]
    bigrams = list(zip(banned, banned[1:]))
    assert len(set(bigrams)) == len(bigrams)
    penalised = gen.generate(model, [[1, 2]], 20, repetition_penalty=5.0, eos_token_id=None)[0]
    assert len(set(penalised[2:])) > len(set(plain[2:]))
    eos = plain[4]  # a token greedy decoding produces: generation must stop right after it
    stopped = gen.generate(model, [[1, 2]], 20, eos_token_id=eos)[0]
    assert stopped == plain[: plain.index(eos, 2) + 1]


def test_stop_strings_cut_after_their_first_occurrence():
    from gptjax.data.tokenizer import CharTokenizer

    tok = CharTokenizer("".join(chr(32 + i) for i in range(97)))
    model = model_for("learned")
    plain = gen.generate(model, ["ab"], 15, tokenizer=tok, eos_token_id=None)[0]
    text = tok.decode(plain[2:])
    stop = text[5:7]
    cut = gen.generate(model, ["ab"], 15, tokenizer=tok, eos_token_id=None, stop=[stop])[0]
    assert tok.decode(cut[2:]).endswith(stop) and len(cut) < len(plain)


def test_bad_options_are_refused():
    model = model_for("learned")
    with pytest.raises(ValueError, match="top_p = 2.0 must be in"):
        gen.generate(model, [[1]], 4, top_p=2.0)
    with pytest.raises(ValueError, match="exceeds the model's 64 learned positions"):
        gen.generate(model, [[1] * 40], 40)
    with pytest.raises(ValueError, match="text prompts need a tokenizer"):
        gen.generate(model, ["hello"], 4)


@pytest.mark.slow
def test_sharded_generation_equals_one_device():
    from gptjax.config import MeshConfig
    from gptjax.runtime import sharding

    model = model_for("rotary-neox-partial")
    one = gen.generate(model, [[1, 2, 3], [4, 5]], 10, eos_token_id=None)
    from flax import nnx

    mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    graphdef, state = nnx.split(model)
    axes = sharding.logical_axes(model)
    params = nnx.to_pure_dict(state)
    shardings = sharding.param_shardings(axes, params, mesh)
    placed = jax.tree.map(jax.device_put, params, shardings)
    nnx.replace_by_pure_dict(state, placed)
    sharded = nnx.merge(graphdef, state)
    kernel = nnx.state(sharded, nnx.Param)["blocks"]["mlp"]["up"]["kernel"].get_value()
    assert len(kernel.sharding.device_set) == 8 and kernel.addressable_shards[0].data.shape[1] < 40
    assert gen.generate(sharded, [[1, 2, 3], [4, 5]], 10, eos_token_id=None) == one


# --- transformers' greedy generate ------------------------------------------------------------

def _hf_configs(transformers):
    return {
        "gpt2": transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=40, n_layer=2, n_head=5),
        "gpt_neo": transformers.GPTNeoConfig(vocab_size=97, max_position_embeddings=64, hidden_size=40, num_layers=2,
                                             num_heads=5, attention_types=[[["global", "local"], 1]], window_size=5),
        "gptj": transformers.GPTJConfig(vocab_size=97, n_positions=64, n_embd=40, n_layer=2, n_head=5, rotary_dim=4),
        "gpt_neox": transformers.GPTNeoXConfig(vocab_size=97, max_position_embeddings=64, hidden_size=40,
                                               num_hidden_layers=2, num_attention_heads=5, intermediate_size=160,
                                               rotary_pct=0.25),
    }


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "gpt_neo", "gptj", "gpt_neox"])
def test_greedy_output_equals_transformers_generate(family, tmp_path):
    torch = reference("torch")
    transformers = reference("transformers")
    import gptjax

    torch.manual_seed(0)
    config = _hf_configs(transformers)[family]
    hf_model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random weights a bit larger than the init, so greedy paths differ by family
        for p in hf_model.parameters():
            p.mul_(3.0)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    model = gptjax.from_pretrained(tmp_path)
    prompts = [[11, 22, 33, 44, 55, 66], [7, 8, 9, 10, 11, 12]]  # past the Neo window of 5 quickly
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor(prompts), attention_mask=torch.ones(2, 6, dtype=torch.long),
                                max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    ours = gptjax.generate(model, prompts, max_new_tokens=20, temperature=0.0, eos_token_id=None)
    assert ours == ref.tolist()


@pytest.mark.slow
def test_sample_slides_past_a_learned_context_as_the_main_job_does():
    # `bash scripts/main.sh` samples 200 tokens from a 64-position model.
    from gptjax import generation
    from gptjax.config import ModelConfig
    from gptjax.model.gpt import init_model

    model = init_model(ModelConfig(vocab_size=65, max_seq_len=64, d_model=32, n_layers=2, n_heads=2))
    out = generation.sample(model, [0], 200, temperature=0.8, top_k=20, seed=1)
    assert len(out) == 200 and all(0 <= t < 65 for t in out)
    assert generation.sample(model, [0], 200, temperature=0.8, top_k=20, seed=1) == out


def test_sample_separates_its_outputs_and_says_when_greedy_copies_are_identical(tmp_path, capsys):
    from gptjax import cli
    from gptjax.interop import native

    directory = native.save_pretrained(init_model(ModelConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layers=1,
                                                              n_heads=2), seed=3), tmp_path / "model")
    assert cli.main(["sample", str(directory), "--prompt-ids", "1,2", "--prompt-ids", "3", "--temperature", "0",
                     "--num-return-sequences", "2", "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0::2] == ["--- prompt 1, sample 1 ---", "--- prompt 1, sample 2 ---", "--- prompt 2, sample 1 ---",
                           "--- prompt 2, sample 2 ---"]
    assert lines[1] == lines[3] and lines[1].startswith("1,2,") and lines[5].startswith("3,")
    assert "identical by construction" in err
    assert cli.main(["sample", str(directory), "--prompt-ids", "1,2", "--temperature", "1", "--num-return-sequences",
                     "2", "--max-new-tokens", "3"]) == 0
    assert "identical" not in capsys.readouterr().err


@pytest.mark.slow
def test_sample_command_slides_every_prompt_past_a_learned_context(tmp_path, capsys):
    """The docs' `gptjax sample RUN --prompt A --prompt B --max-new-tokens 200` on a 64-position
    model: each prompt and each sequence slides its own window, under its own header; a repeat
    is identical, and the repetition penalty and no-repeat n-grams reach every window."""
    from gptjax import cli, generation
    from gptjax.interop import native

    model = init_model(ModelConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layers=1, n_heads=2), seed=3)
    directory = native.save_pretrained(model, tmp_path / "model")
    args = ["sample", str(directory), "--prompt-ids", "1,2", "--prompt-ids", "3", "--num-return-sequences", "2",
            "--max-new-tokens", "80", "--temperature", "1", "--seed", "4"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0::2] == ["--- prompt 1, sample 1 ---", "--- prompt 1, sample 2 ---", "--- prompt 2, sample 1 ---",
                           "--- prompt 2, sample 2 ---"]
    outs = [[int(t) for t in line.split(",")] for line in lines[1::2]]
    assert [len(o) for o in outs] == [82, 82, 81, 81] and outs[0][:2] == [1, 2] and outs[2][:1] == [3]
    assert outs[0] != outs[1], "the two sequences of a prompt drew the same tokens"
    assert outs[0][2:] == generation.sample(model, [1, 2], 80, temperature=1.0, top_k=None, seed=4)
    assert cli.main(args) == 0 and capsys.readouterr().out.splitlines()[1::2] == lines[1::2]
    assert cli.main([*args[:-4], "--temperature", "0", "--no-repeat-ngram-size", "1", "--max-new-tokens", "40"]) == 0
    greedy = [[int(t) for t in line.split(",")] for line in capsys.readouterr().out.splitlines()[1::2]]
    window = greedy[0][-16:]  # the last round's window of 16: no token repeated within it
    assert len(set(window)) == len(window)
