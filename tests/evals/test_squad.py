"""SQuAD v1.1 normaliser and EM/F1 against hand-written cases."""

import pytest

from evals.squad import exact_match_score, f1_score, normalize_answer, squad_evaluate


@pytest.mark.parametrize("raw, expected", [
    ("The Eiffel Tower", "eiffel tower"),              # article dropped, lower-cased
    ("an apple a day", "apple day"),                   # a/an removed as whole words
    ("Theatre anthem", "theatre anthem"),              # articles inside words stay
    ("U.S.A.", "usa"),                                 # punctuation removed, not replaced by space
    ("rock-and-roll", "rockandroll"),                  # hyphen is punctuation
    ("  many   spaces\there\n", "many spaces here"),   # whitespace collapsed
    ("A", ""),                                         # a lone article normalises to empty
    ("“Curly quotes”", "“curly quotes”"),              # non-ASCII punctuation is NOT removed (string.punctuation)
    ("Beyoncé's album", "beyoncés album"),             # accents kept, apostrophe removed
    ("the,the", "thethe"),                             # punctuation removed before articles: 'thethe' is a word
    ("$1,000.50", "100050"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_and_f1_hand_cases():
    assert exact_match_score("the Denver Broncos", "Denver Broncos!") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0
    # pred {denver}, gold {denver, broncos}: P=1, R=1/2 -> F1 = 2/3
    assert f1_score("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    # pred {broncos, broncos, win}, gold {broncos}: common 1, P=1/3, R=1 -> F1 = 0.5
    assert f1_score("Broncos broncos win", "the Broncos") == pytest.approx(0.5)
    # nothing in common, and the v1.1 quirk: two empty normalisations score F1 0 but EM 1
    assert f1_score("Carolina", "Denver") == 0.0
    assert f1_score("the", "a") == 0.0 and exact_match_score("the", "a") == 1.0


def test_max_over_several_golds_and_missing_predictions():
    golds = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["Santa Clara, California", "Levi's Stadium"],
             "q3": ["gold"]}
    preds = {"q1": "broncos", "q2": "Levi's Stadium in Santa Clara"}
    out = squad_evaluate(golds, preds)
    # q1: EM 1 against "The Broncos"; F1 1.
    # q2: EM 0; F1 vs "levis stadium": P=2/5, R=1 -> 4/7; vs "santa clara california": P=2/5, R=2/3 -> 1/2
    # q3: missing -> 0, still counted.
    assert out["count"] == 3 and out["missing"] == 1
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 4 / 7) / 3)
