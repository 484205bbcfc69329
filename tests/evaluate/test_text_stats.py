"""seq-rep-4, distinct-2 and the length ratio on hand-made strings."""

from __future__ import annotations

import pytest

from tunelab.evaluate.text_stats import distinct, length_ratio, repeated_share, seq_rep


def test_seq_rep_4_is_the_share_of_repeated_4grams_within_each_output():
    assert repeated_share("a b c d e f") == 0.0  # 3 four-grams, all distinct
    assert repeated_share("a b c d a b c d") == pytest.approx(1 - 4 / 5)  # abcd twice
    assert repeated_share("ukuze ukuze ukuze ukuze ukuze ukuze") == pytest.approx(1 - 1 / 3)
    assert repeated_share("too short") == 0.0
    # averaged over outputs, percent; repeats across outputs do not count
    assert seq_rep(["a b c d a b c d", "a b c d"]) == pytest.approx(100 * (0.2 + 0.0) / 2)
    assert seq_rep(["a b c d", "a b c d"]) == 0.0
    with pytest.raises(ValueError):
        seq_rep([])


def test_distinct_2_counts_bigrams_over_all_outputs():
    assert distinct(["a b c", "a b d"]) == pytest.approx(100 * 3 / 4)  # ab, bc, ab, bd
    assert distinct(["x x x x"]) == pytest.approx(100 * 1 / 3)
    assert distinct(["one", ""]) == 0.0


def test_length_ratio_in_characters():
    assert length_ratio(["abcd", "ef"], ["ab", "cdef"]) == 1.0
    assert length_ratio(["abcdefgh"], ["abcd"]) == 2.0
    assert length_ratio([""], [""]) == 1.0
    with pytest.raises(ValueError):
        length_ratio(["a"], [])
