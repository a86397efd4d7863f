"""Held-out measurement: windows that score every target once, sets read and checked up front,
bits per byte over the bytes the scored tokens spell, and which results go into result.json."""

import numpy as np
import pytest

from gptjax.data import tokenizer as tok_lib
from gptjax.errors import DataError
from gptjax.training import heldout


@pytest.mark.parametrize("seq_len", [1, 4, 7, 32])
def test_windows_score_every_target_exactly_once_with_contiguous_context(seq_len):
    for n in range(2, 120):
        scored = []
        for start, first in heldout.windows(n, seq_len):
            end = min(start + seq_len + 1, n)  # the window's tokens are [start, end)
            assert 0 <= start < first <= end - 1 < n, (n, start, first)
            assert end - start <= seq_len + 1
            scored += range(first, end)  # targets first..end-1, each predicted from tokens start..target-1
        assert sorted(scored) == list(range(1, n)), (n, seq_len)
        assert len(set(scored)) == len(scored)


def test_windows_are_back_to_back_and_the_last_one_reaches_the_end():
    assert heldout.windows(10, 4) == [(0, 1), (4, 5), (5, 9)]
    assert heldout.windows(9, 4) == [(0, 1), (4, 5)]
    assert heldout.windows(3, 4) == [(0, 1)]  # shorter than one window: padded, scores its 2 targets


def test_set_batches_weigh_the_scored_targets_and_pad_the_rest():
    ids = np.arange(10)
    (tokens, weights), = heldout._set_batches(ids, 4, 4, np.arange(4))
    np.testing.assert_array_equal(tokens[2], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(weights, [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert weights.sum() == 9  # targets 1..9


def test_a_bpe_set_counts_every_byte_of_its_text_once(tmp_path):
    text = "Grüße aus Köln — naïve café.\nSecond line, with 𝔘𝔫𝔦𝔠𝔬𝔡𝔢.\n"
    path = tmp_path / "held.txt"
    path.write_text(text, encoding="utf-8")
    tokenizer = tok_lib.TiktokenTokenizer("gpt2")
    s = heldout.load_set("held", str(path), tokenizer, "text")
    # An end-of-text token goes first, so every token of the text is scored; the one the file
    # ends with (a document boundary) spells no bytes.
    assert s.ids[0] == tokenizer.eot_id and s.ids[-1] == tokenizer.eot_id
    assert s.n_bytes == len(text.encode("utf-8"))
    assert s.ids[1:-1].tolist() == tokenizer.encode(text)


def test_a_char_set_scores_all_but_its_first_character(tmp_path):
    path = tmp_path / "held.txt"
    path.write_text("abcabca")
    s = heldout.load_set("held", str(path), tok_lib.CharTokenizer("abc"), "text")
    assert s.ids.tolist() == [0, 1, 2, 0, 1, 2, 0] and s.n_bytes == 6


def test_token_files_and_bad_sets_are_checked_up_front(tmp_path):
    tokenizer = tok_lib.CharTokenizer("abc")
    good = tmp_path / "held.bin"
    np.array([0, 1, 2, 1], np.uint16).tofile(good)
    assert heldout.load_set("t", str(good), tokenizer, "text").n_bytes == 3
    bad = tmp_path / "bad.bin"
    np.array([0, 7], np.uint16).tofile(bad)
    with pytest.raises(DataError, match=r"eval.sets.t = .*bad.bin.*token id 7 is beyond the tokenizer's 3 ids"):
        heldout.load_set("t", str(bad), tokenizer, "text")
    with pytest.raises(DataError, match=r"eval.sets.t = .*missing.txt.*no such file; give a UTF-8 text file"):
        heldout.load_set("t", str(tmp_path / "missing.txt"), tokenizer, "text")
    odd = tmp_path / "odd.txt"
    odd.write_text("abz")
    with pytest.raises(DataError, match=r"eval.sets.t = .*odd.txt.*cannot be encoded with the run's char tokenizer"):
        heldout.load_set("t", str(odd), tokenizer, "text")


def test_result_evals_keep_each_names_last_measurement_with_its_step():
    rows = [{"step": 5, "loss": 1.0, "val_loss": 2.0, "eval/a/loss": 3.0, "eval/a/bpb": 4.0, "eval/t/acc": 0.5},
            {"step": 6, "loss": 1.0},
            {"step": 10, "loss": 1.0, "val_loss": 1.9, "eval/a/loss": 2.5, "eval/a/bpb": 3.5}]
    assert heldout.evals_of(rows) == {"a": {"step": 10, "loss": 2.5, "bpb": 3.5}, "t": {"step": 5, "acc": 0.5}}
