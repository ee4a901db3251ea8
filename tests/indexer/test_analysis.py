"""indexer.analysis: token-for-token equality with Lucene's English analyzer."""

import gzip
import json
import random
from pathlib import Path

import pytest

from indexer.analysis import (ENGLISH_STOP_WORDS, LuceneEnglishAnalyzer, StandardAnalyzer, WhitespaceAnalyzer,
                              _get_tables, get_analyzer, java_lower, lucene_porter_stem, porter_stem,
                              tokenize_uax29)

FIXTURE = Path(__file__).parent / "fixtures" / "lucene_english_tokens.json.gz"


@pytest.fixture(scope="module")
def lucene_fixture():
    # Tokens from the real Lucene (Anserini DefaultEnglishAnalyzer, Lucene 9.9.1 in pyserini's
    # anserini-1.7.1 fat jar), made by tests/indexer/fixtures/make_lucene_fixtures.py.
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        return json.load(f)


def test_tricky_cases_equal_lucene(lucene_fixture):
    a = LuceneEnglishAnalyzer()
    cases = [c for c in lucene_fixture["cases"] if c["source"] == "tricky"]
    assert len(cases) >= 10
    for case in cases:
        assert a.analyze(case["text"]) == case["tokens"], case["text"][:80]


def test_corpus_documents_equal_lucene(lucene_fixture, data_dir):
    from indexer.data import read_corpus

    a = LuceneEnglishAnalyzer()
    for source in ("scifact", "cranfield"):
        docs = {d["id"]: d for d in read_corpus(source)}
        cases = [c for c in lucene_fixture["cases"] if c["source"] == source]
        assert len(cases) >= 200
        for case in cases:
            d = docs[case["id"]]
            assert a.analyze(d["title"] + " " + d["text"]) == case["tokens"], (source, case["id"])


def test_regex_tokenizer_equals_lucene_dfa_on_random_strings():
    # The regex paths against Lucene's own JFlex DFA (uax29_lucene.json), on random strings drawn
    # from every character class: joins, Mid* letters, Hebrew quotes, katakana, extenders, scripts.
    t = _get_tables()
    reps: dict[int, list[int]] = {0: [0x20, 0x21, 0x2D, 0x3000]}
    for s, e, c in t.ranges:
        reps.setdefault(c, []).extend([s, e - 1])
    pool = {c: sorted(set(v))[:3] + sorted(set(v))[-2:] for c, v in reps.items()}
    classes = list(pool)
    rng = random.Random(1234)
    for _ in range(4000):
        text = "".join(chr(rng.choice(pool[rng.choice(classes)])) for _ in range(rng.randint(1, 14)))
        assert tokenize_uax29(text) == t.dfa_tokens(text), [hex(ord(c)) for c in text]


def test_ascii_regex_equals_lucene_dfa_on_random_ascii():
    # The ASCII path (a plain-run shortcut in front of the full rules) on dense mixes of letters,
    # digits, "_" and every Mid* character, where the shortcut and the full rules meet.
    t = _get_tables()
    rng = random.Random(99)
    for _ in range(20000):
        text = "".join(rng.choice("aZ09_'.:,; -") for _ in range(rng.randint(1, 12)))
        assert t.ascii_re.findall(text) == t.dfa_tokens(text), text


@pytest.mark.parametrize("text,tokens", [
    ("U.S.A. isn't abc123", ["U.S.A", "isn't", "abc123"]),  # MidNumLet/SingleQuote between letters
    ("3.14 1,000 a.1 x_y ___", ["3.14", "1,000", "a", "1", "x_y"]),  # MidNum between digits; ENL joins
    ("hy\u00adphen co\u0301op", ["hy\u00adphen", "co\u0301op"]),  # WB4: Format/Extend absorbed
    ("中文 ひらがな カタカナ", ["中", "文", "ひ", "ら", "が", "な", "カタカナ"]),
    ("a" * 300, ["a" * 255, "a" * 45]),  # StandardTokenizer chops at 255
])
def test_uax29_rules(text, tokens):
    assert tokenize_uax29(text) == tokens


def test_normalization_steps():
    a = LuceneEnglishAnalyzer()
    # possessive (' ’ ＇ + s/S) -> lowercase (Java per code point) -> stop -> Porter
    assert a.analyze("John's JOHN’S dogs' The") == ["john", "john", "dog"]  # trailing ' is no MidLetter
    assert java_lower("\u0130STANBUL") == "istanbul"  # Java: U+0130 -> i (Python's lower gives i + U+0307)
    assert java_lower("ΣΟΦΟΣ") == "σοφοσ"  # no final-sigma rule in Character.toLowerCase
    assert len(ENGLISH_STOP_WORDS) == 33 and "with" in ENGLISH_STOP_WORDS
    assert a.analyze("the and of a an") == []


@pytest.mark.parametrize("word,stem", [
    # Porter (1980) examples, as Lucene's PorterStemmer gives them
    ("caresses", "caress"), ("ponies", "poni"), ("agreed", "agre"), ("disabled", "disabl"),
    ("matting", "mat"), ("mating", "mate"), ("meetings", "meet"), ("relational", "relat"),
    ("generalizations", "gener"), ("oscillators", "oscil"), ("hopefulness", "hope"),
    # Lucene/reference-C behaviour that Snowball's English stemmer does not share
    ("dying", "dy"), ("skies", "ski"), ("news", "new"), ("ion", "ion"), ("aed", "a"), ("eed", "eed"),
])
def test_porter_stemmer(word, stem):
    assert porter_stem(word) == stem


@pytest.mark.parametrize("word,stem", [
    # the three departures of Lucene's (Porter's reference C) stemmer from Snowball's "porter"
    ("analogy", "analog"), ("archaeology", "archaeolog"),  # step 2 "logi" -> "log" (Snowball: analogi)
    ("possibly", "possibl"), ("assembly", "assembl"),  # step 2 "bli" -> "ble" (Snowball: "abli" only)
    ("as", "as"), ("5s", "5s"), ("ey", "ey"),  # one- and two-letter words are not stemmed
])
def test_porter_departures_from_snowball_take_the_lucene_rules(word, stem):
    assert porter_stem(word) == stem == lucene_porter_stem(word)


def test_fast_porter_equals_line_by_line_port_on_corpus_vocabularies(data_dir):
    # porter_stem sends words without "bl"/"log" to Snowball's C "porter"; it must give the port's
    # stem for every distinct token of the mirrored BEIR corpora (44,527 words, ~95% of them on the fast path).
    pytest.importorskip("Stemmer")
    from indexer.data import read_corpus

    vocab = set()
    for source in ("scifact", "cranfield", "cisi"):
        for d in read_corpus(source):
            vocab.update(java_lower(t) for t in tokenize_uax29(d["title"] + " " + d["text"]))
    assert len(vocab) > 40_000
    wrong = [(w, porter_stem(w), lucene_porter_stem(w)) for w in sorted(vocab) if porter_stem(w) != lucene_porter_stem(w)]
    assert wrong == []


def test_analyzer_specs_round_trip():
    for a in (LuceneEnglishAnalyzer(), LuceneEnglishAnalyzer(stem=False), StandardAnalyzer(),
              WhitespaceAnalyzer(lowercase=False)):
        assert get_analyzer(a.to_dict()) == a
    assert get_analyzer("english").name == "lucene-english-v1"
    assert StandardAnalyzer().analyze("The Cats") == ["the", "cats"]
    assert WhitespaceAnalyzer().analyze("Hello  WORLD's") == ["hello", "world's"]
    with pytest.raises(ValueError, match="unknown analyzer 'klingon'"):
        get_analyzer("klingon")
    with pytest.raises(ValueError, match="bad parameters"):
        get_analyzer({"name": "lucene-english-v1", "stemmer": "snowball"})
