"""DPR has_answer (string and regex modes) and top-k accuracy."""

import unicodedata

import pytest

from evals.dpr import first_hit_ranks, has_answer, simple_tokenize, top_k_accuracy


def test_simple_tokenizer_matches_dpr_regex():
    # letters/digits/marks form tokens; every other non-space character is its own token
    assert simple_tokenize("U.S. GDP grew 3.5%") == ["u", ".", "s", ".", "gdp", "grew", "3", ".", "5", "%"]
    assert simple_tokenize("Hello", uncased=False) == ["Hello"]


@pytest.mark.parametrize("answers, text, expected", [
    (["Denver Broncos"], "The denver broncos won Super Bowl 50.", True),       # uncased
    (["Broncos"], "Broncos' defence", True),                                   # apostrophe splits tokens
    (["Paris"], "Parisian cafés are busy.", False),                            # token, not substring match
    (["super bowl"], "Super-Bowl", False),                                     # '-' is a token in between
    (["1990"], "In 1990s fashion", False),                                     # '1990s' is one token
    (["Beyoncé"], unicodedata.normalize("NFD", "Beyoncé sang."), True),        # NFD on both sides
    (["Beyoncé"], "Beyonce sang.", False),                                     # the mark is part of the token
    (["x", "3.5%"], "growth of 3.5% in 2015", True),                           # any of several answers
    (["San Jose"], "San\nJose", True),                                         # whitespace between tokens is free
])
def test_has_answer_string(answers, text, expected):
    assert has_answer(answers, text) is expected


def test_has_answer_regex_mode():
    assert has_answer([r"19[0-9]{2}"], "born in 1981", match_type="regex") is True
    assert has_answer([r"^born"], "he was\nborn", match_type="regex") is True   # MULTILINE: ^ at line start
    assert has_answer([r"^born"], "he was born", match_type="regex") is False
    assert has_answer(["(unclosed"], "text", match_type="regex") is False  # bad pattern = no match
    with pytest.raises(ValueError, match="match_type"):
        has_answer(["a"], "a", match_type="fuzzy")


def test_top_k_accuracy_from_ranks():
    ranks = first_hit_ranks([["Paris"], ["Lyon"], ["Nice"]],
                            [["Lyon is big", "Paris is the capital"], ["Lyon"], ["Marseille", "Toulouse"]])
    assert ranks == [2, 1, None]
    assert top_k_accuracy(ranks, ks=(1, 2, 20)) == {"top@1": 1 / 3, "top@2": 2 / 3, "top@20": 2 / 3}
