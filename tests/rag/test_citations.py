"""rag.citations: well-formed cited answers, marker debris, the lexical judge's tokens, common runs."""

import pytest

from rag.citations import (LexicalJudge, _marker_debris, check_cited_answer, longest_common_run, normalize_tokens,
                           split_sentences)


@pytest.mark.parametrize("answer,reason", [
    ("", "empty answer"), ("  \n", "empty answer"),
    ("1]", "malformed citation marker"),  # the grounded PPO run's fragment
    ("[1", "malformed citation marker"), ("Paris [1, 2]", "malformed citation marker"),
    ("Paris []", "malformed citation marker"), ("Paris [a]", "malformed citation marker"),
    ("Paris [1234]", "malformed citation marker"),  # more than 3 digits is not a marker
    ("Paris [3]", "citation out of range"), ("Paris [0]", "citation out of range"),
    ("[1]", "no content words"), ("[1][2].", "no content words"), ("It is the [2]", "no content words"),
    ("1", "citation debris"), ("1 2 [1]", "citation debris"), ("2121 [2]", "citation debris"),
    ("Paris [1][2]", None), ("24 [1]", None), ("It was 1889 [2].", None), ("Paris", None),
])
def test_check_cited_answer(answer, reason):
    assert check_cited_answer(answer, n_passages=2) == reason


def test_marker_debris_splits_into_marker_numbers():
    # 12 passages shown: "112" = 1|12 or 11|2; "130" needs 13 or a piece starting with 0: not debris
    assert _marker_debris("112", 12) and _marker_debris("12", 12) and not _marker_debris("130", 12)
    assert not _marker_debris("3", 2) and not _marker_debris("10", 1) and not _marker_debris("1", 0)
    assert not _marker_debris("paris", 2)


def test_tokens_runs_and_judge():
    assert normalize_tokens("The Denver Broncos [1] won!") == ["denver", "broncos", "1", "won"]
    assert longest_common_run("a b c d".split(), "x b c d b".split()) == 3
    assert longest_common_run([], ["a"]) == 0
    assert LexicalJudge().judge([("Paris is the capital of France.", "capital of France")]) == [True]
    assert split_sentences("Paris [1]. 24 to 10 [2].") == ["Paris [1].", "24 to 10 [2]."]
