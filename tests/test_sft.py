"""Supervised fine-tuning rows: the loss covers response tokens only, packed rows compute what
padded rows compute, and chat messages train assistant turns only."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config import DataConfig, ModelConfig
from gptjax.data import tokenizer as tok_lib
from gptjax.errors import DataError
from gptjax.finetune import sft
from gptjax.model.gpt import init_model
from gptjax.training import trainer

CHARS = tok_lib.CharTokenizer("".join(sorted(set("abcdefghijklmnopqrstuvwxyz ?!.:<>|\n"))))


class WithEot:
    """Characters plus an end-of-text id one past them, as BPE vocabularies have."""

    name, vocab_size, eot_id = "chars+eot", CHARS.vocab_size + 1, CHARS.vocab_size

    def encode(self, text):
        return CHARS.encode(text)


TOK = WithEot()
PAIRS = [("what is up?", "the sky."), ("say hi", "hi!"), ("count:", "one two three"), ("q", "a"),
         ("a longer prompt here", "short")]


def examples():
    return [sft.render({"prompt": p, "response": r}, "test", TOK, "") for p, r in PAIRS]


def test_only_response_tokens_and_end_of_text_are_trained():
    ex = examples()[0]
    p, r = TOK.encode("what is up?"), TOK.encode("the sky.")
    assert ex.ids == p + r + [TOK.eot_id]
    assert ex.trained == [False] * len(p) + [True] * (len(r) + 1)
    packed = sft.rows(examples(), 32, packing=True)
    assert packed["tokens"].shape[0] < len(PAIRS)  # several examples share a row
    for row in range(packed["tokens"].shape[0]):
        seg, w = packed["segments"][row], packed["weights"][row]
        # A target is trained only inside its own example: never the next example's first token.
        assert np.all(w[seg[1:] != seg[:-1]] == 0)
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]] & (seg > 0))
        assert np.all(packed["positions"][row][starts] == 0)
    trained = int(packed["weights"].sum())
    assert trained == sum(len(TOK.encode(r)) + 1 for _, r in PAIRS)


def _losses(rows, model):
    total, ce, w = trainer.row_losses(model, jax.tree.map(jnp.asarray, rows), None, 0.0)
    return float(jnp.sum(ce * w)), float(jnp.sum(w))


@pytest.mark.slow
def test_packed_rows_compute_what_padded_rows_compute_and_match_a_plain_forward():
    model = init_model(ModelConfig(vocab_size=TOK.vocab_size, max_seq_len=33, d_model=32, n_layers=2, n_heads=4,
                                   position="rotary"), seed=0)
    packed = _losses(sft.rows(examples(), 32, packing=True), model)
    padded = _losses(sft.rows(examples(), 32, packing=False), model)
    assert packed[1] == padded[1]
    assert packed[0] == pytest.approx(padded[0], rel=1e-6)
    # The reference: each example alone through the plain model, response targets only.
    ref = 0.0
    for ex in examples():
        logits = model.logits(jnp.asarray([ex.ids[:-1]]))[0]
        logp = jax.nn.log_softmax(logits, axis=-1)
        for t, (target, trained) in enumerate(zip(ex.ids[1:], ex.trained[1:])):
            ref -= float(logp[t, target]) if trained else 0.0
    assert packed[0] == pytest.approx(ref, rel=1e-5)


def test_an_earlier_example_changes_nothing_of_the_next_one_in_its_row():
    """Packed examples attend only within themselves: rewriting the first example of a row leaves
    every loss of the second unchanged."""
    model = init_model(ModelConfig(vocab_size=TOK.vocab_size, max_seq_len=65, d_model=32, n_layers=2, n_heads=4),
                       seed=1)
    a = examples()
    b = [sft.render({"prompt": "zzzz zz zz?", "response": "xxx xxx."}, "test", TOK, ""), *a[1:]]
    ra, rb = sft.rows(a, 64, packing=True), sft.rows(b, 64, packing=True)
    np.testing.assert_array_equal(ra["segments"], rb["segments"])
    _, ce_a, _ = trainer.row_losses(model, jax.tree.map(jnp.asarray, ra), None, 0.0)
    _, ce_b, _ = trainer.row_losses(model, jax.tree.map(jnp.asarray, rb), None, 0.0)
    seg = ra["segments"][0]
    second = np.asarray((seg[:-1] == 2) & (seg[1:] == 2))  # the second example's own targets
    assert second.sum() > 5
    np.testing.assert_allclose(np.asarray(ce_a[0])[second], np.asarray(ce_b[0])[second], rtol=1e-6)


def test_chat_messages_train_assistant_turns_only(tmp_path):
    record = {"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                           {"role": "assistant", "content": "bye!"}]}
    ex = sft.render(record, "x", TOK, "<|{role}|>\n{content}\n")
    text = "".join(CHARS.decode([i for i, t in zip(ex.ids, ex.trained) if t and i != TOK.eot_id]))
    assert text == "hello\nbye!\n"
    (tmp_path / "chat.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({"messages": []}) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl:2: messages = \[\]"):
        sft.load(DataConfig(sft_files=(str(tmp_path / "chat.jsonl"),)), TOK, 32)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: expected string fields prompt and response"):
        sft.load(DataConfig(sft_files=(str(tmp_path / "bad.jsonl"),)), TOK, 32)
