"""rag.curriculum: cloze spans and questions (hand-checked), the writer (spans verified, determinism,
readable by rag.data and wandao augment sft), and the refusal of XQuAD-test text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from indexer.data import DataError
from rag.curriculum import (ClozeConfig, TestTextGuard, detokenize_wikitext, find_spans, make_question,
                            sentence_windows, write_cloze_questions)
from rag.xquad import test_titles

# Five articles, one paragraph each; the split rule sends round(0.2 * 5) = 1 of them to test.
ARTICLES = {
    "Normans": "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a "
               "region in France. They were descended from Norse raiders and pirates from Denmark, Iceland and "
               "Norway who, under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. "
               "The distinct cultural and ethnic identity of the Normans emerged initially in the first half of "
               "the 10th century.",
    "Steam_engine": "Steam engines are external combustion engines, where the working fluid is separate from the "
                    "combustion products. In 1712 Thomas Newcomen built the first commercially successful engine, "
                    "which pumped water out of mines. About 2,000 engines were working in Britain by 1800, and the "
                    "improved design of James Watt raised their efficiency by 75 percent.",
    "Amazon_rainforest": "The Amazon rainforest covers most of the Amazon basin of South America. This basin "
                         "encompasses 7,000,000 square kilometres, of which 5,500,000 square kilometres are covered "
                         "by the rainforest. The region includes territory belonging to nine nations, and the "
                         "majority of the forest is contained within Brazil, with 60 percent of the rainforest.",
    "Oxygen": "Oxygen is a chemical element with symbol O and atomic number 8. It is a member of the chalcogen "
              "group on the periodic table and is a highly reactive nonmetal. Joseph Priestley described the gas "
              "in a paper published on August 1, 1774, and Carl Wilhelm Scheele had found it in Uppsala earlier. "
              "By mass, oxygen is the third most abundant element in the universe after hydrogen and helium.",
    "Victoria_and_Albert_Museum": "The Victoria and Albert Museum in London is the largest museum of decorative "
                                  "arts and design in the world, housing a permanent collection of over 4.5 "
                                  "million objects. It was founded in 1852 and named after Queen Victoria and "
                                  "Prince Albert. The museum covers 12.5 acres and holds 145 galleries, with "
                                  "collections that span 5,000 years of art.",
}
TEST_TITLE = next(iter(test_titles(set(ARTICLES))))

OTHER = [
    "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean and the Mediterranean "
    "Sea. It may grow to a length of 60 cm and a mass of 6 kilograms, and bears a conspicuous pair of claws. "
    "Mating occurs in the summer, producing eggs which are carried by the females for up to a year. The lobster "
    "was first described by Carl Linnaeus in 1758, who placed it in the genus Cancer.",
    "The city council approved the new bridge on March 3, 1921, after a long debate in the town hall. "
    "Construction took 4 years and employed 1,200 workers from the surrounding villages. The bridge crosses "
    "the river delta near the old harbour and was opened by the mayor of Rotterdam in front of a large crowd.",
]


@pytest.fixture()
def xquad_file(tmp_path: Path) -> Path:
    path = tmp_path / "xquad.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, (title, context) in enumerate(ARTICLES.items()):
            f.write(json.dumps({"id": f"q{i}", "title": title, "context": context, "question": "What?",
                                "answers": {"text": [context.split()[1]], "answer_start": [0]}}) + "\n")
    return path


@pytest.fixture()
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(OTHER):
            f.write(json.dumps({"_id": f"doc{i}", "title": f"Doc {i}", "text": text}) + "\n")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_spans_of_a_sentence_hand_checked():
    s = "In 1712 Thomas Newcomen built the first engine for 2,000 miners on March 3, 1721."
    got = [(sp.text, sp.type, sp.wh, sp.start) for sp in find_spans(s)]
    assert got == [
        ("1712", "year", "in what year", 3),  # after "In": the question keeps the preposition
        ("Thomas Newcomen", "name", "what", 8),  # followed by "built" (not a person verb in the list): "what"
        ("2,000", "number", "how many miners", 51),  # the unit moves into the wh-phrase
        ("March 3, 1721", "date", "when", 67),  # the date wins over its year "1721"
    ]
    # "the first engine" is not a noun answer: "first" is a stop word.
    assert find_spans("He was born in Paris, and Marie Curie said so.", types=["name"])[0].wh == "where"
    assert find_spans("He met Marie Curie said so.", types=["name"])[0].wh == "who"
    # 40 percent is a percentage, not a year nor a count.
    assert [(sp.text, sp.wh) for sp in find_spans("About 40 percent voted.")] == [("40 percent", "what percentage")]


def test_question_for_a_fixture_sentence_hand_checked():
    s = "The Normans gave their name to Normandy, a region in France."
    span = next(sp for sp in find_spans(s) if sp.text == "Normandy")
    assert span.type == "name" and span.start == 31
    # in place: the clause up to the comma, the gap asked by "what"
    assert make_question(s, span, "inplace", random.Random(0), drop_fraction=0.0) == \
        "The Normans gave their name to what?"
    # fronted: the wh-phrase first; the words before the gap keep their order
    fronted = make_question(s, span, "fronted", random.Random(0), drop_fraction=0.0)
    assert fronted == "What The Normans gave their name to?"
    # dropping: never fewer than two context words, and never the answer itself
    for seed in range(20):
        q = make_question(s, span, "inplace", random.Random(seed), drop_fraction=0.9)
        assert "Normandy" not in q and len(q.rstrip("?").split()) >= 3


def test_sentence_windows_hand_checked():
    p = {"id": "xquad:T:3", "title": "T", "text": "The Normans came in 911.  They stayed.\nDr. Who left? Yes! End"}
    assert list(sentence_windows(p)) == [
        {"_id": "xquad:T:3#s0", "title": "T", "text": "The Normans came in 911."},
        {"_id": "xquad:T:3#s1", "title": "T", "text": "They stayed."},
        {"_id": "xquad:T:3#s2", "title": "T", "text": "Dr."},
        {"_id": "xquad:T:3#s3", "title": "T", "text": "Who left?"},
        {"_id": "xquad:T:3#s4", "title": "T", "text": "Yes!"},
        {"_id": "xquad:T:3#s5", "title": "T", "text": "End"}]
    assert [c["_id"] for c in sentence_windows(p, 4)] == ["xquad:T:3#s0", "xquad:T:3#s4"]
    assert list(sentence_windows(p, 4))[1]["text"] == "Yes! End"
    with pytest.raises(ValueError, match="window"):
        list(sentence_windows(p, 0))


def test_detokenize_wikitext():
    assert detokenize_wikitext("a mass of 6 kilograms ( 13 lb ) , and 1 @,@ 200 @-@ year @.@ 5 's") == \
        "a mass of 6 kilograms (13 lb), and 1,200-year.5's"


def test_writer_rows_spans_verified_and_deterministic(tmp_path, xquad_file, corpus_file):
    out = tmp_path / "cloze.jsonl"
    kw = dict(xquad_path=str(xquad_file), min_words=20, corpus_out=str(tmp_path / "corpus-out.jsonl"))
    summary = write_cloze_questions(["xquad-en:train", str(corpus_file)], out, examples=30, seed=3, **kw)
    rows = _read(out)
    assert summary["examples"] == len(rows) == 30 and not summary["exhausted"]
    assert summary["paragraphs"] == 4 + 2  # four train articles, two corpus documents
    test_context = ARTICLES[TEST_TITLE]
    for r in rows:
        (text,), (start,) = r["answers"]["text"], r["answers"]["answer_start"]
        assert r["context"][start:start + len(text)] == text
        assert r["context"] != test_context
        assert r["question"].endswith("?") and r["answer_type"] in ("date", "year", "number", "name", "noun")
    # round robin: six paragraphs, 30 questions → every paragraph is asked about
    assert len({r["paragraph_id"] for r in rows}) == 6
    assert len({r["id"] for r in rows}) == 30
    # the same seed gives the same bytes; another seed another file
    again = tmp_path / "again.jsonl"
    write_cloze_questions(["xquad-en:train", str(corpus_file)], again, examples=30, seed=3, **kw)
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "other.jsonl"
    write_cloze_questions(["xquad-en:train", str(corpus_file)], other, examples=30, seed=4, **kw)
    assert other.read_bytes() != out.read_bytes()
    corpus_rows = _read(tmp_path / "corpus-out.jsonl")
    assert {r["_id"] for r in corpus_rows} == {r["paragraph_id"] for r in rows}


def test_writer_stops_when_spans_run_out(tmp_path, xquad_file, corpus_file):
    summary = write_cloze_questions([str(corpus_file)], tmp_path / "c.jsonl", examples=10_000, seed=0,
                                    xquad_path=str(xquad_file), min_words=20)
    assert summary["exhausted"] and 10 < summary["examples"] < 100
    capped = write_cloze_questions([str(corpus_file)], tmp_path / "d.jsonl", examples=10_000, seed=0,
                                   xquad_path=str(xquad_file), min_words=20, per_paragraph=3)
    assert capped["examples"] == 6  # two documents, three questions each


def test_rows_read_like_xquad(tmp_path, xquad_file, corpus_file):
    from rag.data import iter_items

    out = tmp_path / "cloze.jsonl"
    write_cloze_questions([str(corpus_file)], out, examples=5, seed=0, xquad_path=str(xquad_file), min_words=20)
    items = list(iter_items(str(out)))
    rows = _read(out)
    assert [it.answer for it in items] == [r["answers"]["text"][0] for r in rows]
    assert [it.gold_ids for it in items] == [[r["paragraph_id"]] for r in rows]
    assert [it.question for it in items] == [r["question"] for r in rows]


def test_test_paragraphs_refused(tmp_path, xquad_file):
    for source in ("xquad-en", "xquad-en:all", "xquad-en:test"):
        with pytest.raises(DataError, match="XQuAD-test"):
            write_cloze_questions([source], tmp_path / "x.jsonl", examples=5, seed=0, xquad_path=str(xquad_file))
    # a corpus that copies one sentence of the test paragraph (in another paragraph) is refused too
    sentence = ARTICLES[TEST_TITLE].split(". ")[0] + "."
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({"_id": "leak", "title": "", "text": OTHER[0] + " " + sentence}) + "\n")
    with pytest.raises(DataError, match="'leak:p0' contains an XQuAD-test"):
        write_cloze_questions([str(leaky)], tmp_path / "x.jsonl", examples=5, seed=0, xquad_path=str(xquad_file),
                              min_words=20)
    assert not (tmp_path / "x.jsonl").exists()
    guard = TestTextGuard([ARTICLES[TEST_TITLE]])
    guard.check("ok", {"id": "fine", "text": OTHER[1]})  # unrelated text passes


def test_config_validation():
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError, match="types"):
        ClozeConfig(sources=["x"], out="y", types=["verb"])
    with pytest.raises(ConfigError, match="drop_fraction"):
        ClozeConfig(sources=["x"], out="y", drop_fraction=1.5)


def test_cli(tmp_path, xquad_file, corpus_file, capsys, data_dir):
    from rag.cli import augment_main

    out = tmp_path / "cli.jsonl"
    rc = augment_main(["cloze", "--from", str(corpus_file), "--examples", "4", "--seed", "1", "--out", str(out)])
    # the CLI reads the mirrored XQuAD for its guard; the fixture corpus shares nothing with it
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["examples"] == 4 and len(_read(out)) == 4
    assert augment_main(["cloze", "--from", "xquad-en:test", "--out", str(out)]) == 2
    assert "XQuAD-test" in capsys.readouterr().err
