"""Preference rows: readers, errors with file/line/field, the prompt-hash split, K-wise grouping."""

import gzip
import json

import pytest

from align.preference_data import (PreferenceRow, expand_to_pairs, group_rankings, read_preferences, row_from_record,
                                   split_by_prompt, split_hh_pair)
from indexer.data import DataError

H, A = "\n\nHuman: ", "\n\nAssistant: "


def _write(path, rows):
    with gzip.open(path, "wt") if str(path).endswith(".gz") else open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_split_hh_pair_plain_and_multi_turn():
    chosen = f"{H}Hi{A}Hello{H}Any tips?{A}Drink water."
    rejected = f"{H}Hi{A}Hello{H}Any tips?{A}No."
    prompt, c, r = split_hh_pair(chosen, rejected)
    assert prompt == f"{H}Hi{A}Hello{H}Any tips?{A}"
    assert (c, r) == ("Drink water.", "No.")


def test_split_hh_pair_when_a_response_holds_its_own_turns():
    # hh-rlhf harmless-base line 1255 style: the chosen reply continues with "Human:" text, so
    # splitting each transcript at its own last "Assistant:" would give two different prompts.
    chosen = f"{H}Who are drag kings?{A}Women who perform as men.{H}Why?{A}Tradition."
    rejected = f"{H}Who are drag kings?{A}The opposite of drag queens."
    prompt, c, r = split_hh_pair(chosen, rejected)
    assert prompt == f"{H}Who are drag kings?{A}"
    assert c == f"Women who perform as men.{H}Why?{A}Tradition."
    assert r == "The opposite of drag queens."
    row = row_from_record({"chosen": chosen, "rejected": rejected}, "x.jsonl", 7)
    assert row.question == "Who are drag kings?" and row.history == []


def test_readers_for_every_shape(tmp_path):
    path = _write(tmp_path / "prefs.jsonl", [
        {"chosen": f"{H}Hi{A}Hello{H}Tip?{A}Sleep.", "rejected": f"{H}Hi{A}Hello{H}Tip?{A}"},  # empty reply
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome.", "strength": "better",
         "evidence": [{"id": "d1", "title": "France", "text": "Paris is the capital."}]},
        {"question": "Rank these", "responses": ["a", "b", "c"], "ranks": [1, 0, 1],
         "strengths": [[1, 0, "significantly better"]], "history": [["user", "hey"], ["assistant", "yo"]]},
    ])
    rows = read_preferences(path)
    hh, pair, ranked = rows
    assert (hh.question, hh.history, hh.responses, hh.ranks) == ("Tip?", [("user", "Hi"), ("assistant", "Hello")],
                                                                 ["Sleep.", ""], [0, 1])
    assert pair.strengths == {(0, 1): "better"} and pair.evidence[0]["id"] == "d1"
    assert ranked.comparisons() == [(1, 0), (1, 2)]  # 0 and 2 tie
    assert ranked.history == [("user", "hey"), ("assistant", "yo")]
    # the pairwise view: one row per comparison, strengths carried
    pairs = expand_to_pairs([ranked])
    assert [p.responses for p in pairs] == [["b", "a"], ["b", "c"]]
    assert pairs[0].strengths == {(0, 1): "significantly better"} and pairs[1].strengths == {}


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "q", "chosen": "a"}, "rejected", "must be a string"),  # missing rejected
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "must not be empty"),
    ({"prompt": "q", "responses": ["a"]}, "responses", "at least 2"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [0]}, "ranks", "list of 2"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, 1]}, "ranks", "all responses tie"),
    ({"prompt": "q", "responses": ["a", "b"], "strengths": [[1, 0, "better"]]}, "strengths", "not ranked above"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "strength": [1]}, "strength", "label or a number"),
    ({"chosen": "no transcript", "rejected": "here"}, "rejected", "share no"),
    ({"chosen": f"{A}x", "rejected": f"{A}y"}, "chosen", "no Human turn"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "history": [["bot", "x"]]}, "history", "turn 0"),
    ({"text": "neither"}, "prompt", "no prompt"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field, message):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "fine", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=message) as err:
        read_preferences(path)
    assert err.value.line == 2 and err.value.field == field and err.value.path == str(path)
    assert f"bad.jsonl, line 2 (field '{field}')" in str(err.value)


def test_malformed_json_and_missing_sources(tmp_path):
    path = _write(tmp_path / "broken.jsonl", ['{"prompt": "q", "chosen": "a", "rejected": "b"}', "{not json"])
    with pytest.raises(DataError, match="line 2"):
        read_preferences(path)
    with pytest.raises(DataError, match="hh-rlhf:helpful-base"):
        read_preferences("no-such-source")
    with pytest.raises(DataError, match="unknown hh-rlhf subset"):
        read_preferences("hh-rlhf:helpful")


def test_split_is_deterministic_disjoint_and_by_prompt():
    rows = [PreferenceRow(str(i), f"question {i // 2}", ["a", "b"], [0, 1]) for i in range(400)]  # 200 prompts x 2
    train, test = split_by_prompt(rows, "train"), split_by_prompt(rows, "test")
    assert len(train) + len(test) == 400 and not {r.id for r in train} & {r.id for r in test}
    assert {r.question for r in train}.isdisjoint({r.question for r in test})  # a prompt lies on one side
    assert 0.12 < len(test) / 400 < 0.28
    assert [r.id for r in split_by_prompt(rows, "test")] == [r.id for r in test]  # same every call
    assert len(split_by_prompt(rows, "all")) == 400


def test_hh_rlhf_test_files_split_80_20(data_dir):
    # Golden counts of the prompt-hash split (salt "wandao-rm", SHA-1), checked 2026-11-27.
    expected = {"helpful-base": (2354, 459), "harmless-base": (2312, 456), "helpful-rejection-sampled": (2749, 582)}
    for subset, (n, n_test) in expected.items():
        rows = read_preferences(f"hh-rlhf:{subset}")
        assert len(rows) == n
        assert len(split_by_prompt(rows, "test")) == n_test
    # the same file given by path reads the same rows
    path = data_dir / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    assert [r.responses for r in read_preferences(path, limit=3)] == [
        r.responses for r in read_preferences("hh-rlhf:helpful-base", limit=3)]


def _pair(prompt, a, b, i):
    return PreferenceRow(f"r{i}", prompt, [a, b], [0, 1], line=i)


def test_group_rankings_builds_k3_rows_from_a_total_order():
    rows = [_pair("q", "A", "B", 1), _pair("q", "B", "C", 2), _pair("q", "A", "C", 3), _pair("other", "x", "y", 4)]
    rows[1].strengths = {(0, 1): "slightly better"}
    out, stats = group_rankings(rows)
    ranked = next(r for r in out if r.question == "q")
    assert ranked.responses == ["A", "B", "C"] and ranked.ranks == [0, 1, 2]
    assert ranked.strengths == {(1, 2): "slightly better"}  # B > C keeps its strength
    assert stats["groups_merged"] == 1 and stats["k_histogram"] == {"2": 1, "3": 1}
    # its comparisons are exactly the input pairs
    assert sorted((ranked.responses[i], ranked.responses[j]) for i, j in ranked.comparisons()) == [
        ("A", "B"), ("A", "C"), ("B", "C")]


def test_group_rankings_keeps_cycles_and_partial_orders_as_pairs():
    cycle = [_pair("q", "A", "B", 1), _pair("q", "B", "C", 2), _pair("q", "C", "A", 3)]
    out, stats = group_rankings(cycle)
    assert stats["groups_merged"] == 0 and len(out) == 3
    partial = [_pair("q", "A", "B", 1), _pair("q", "C", "D", 2)]  # hh-rlhf's repeated prompts look like this
    out, stats = group_rankings(partial)
    assert stats["groups_merged"] == 0 and len(out) == 2


def test_hh_rlhf_prompts_do_not_form_rankings_but_hhh_evals_do(data_dir):
    # Finding (2026-11-27): across the three hh-rlhf test files only 3 prompts repeat (harmless-base 2,
    # helpful-rejection-sampled 1), each with two unrelated pairs, so no K=3 row can be built. The HHH
    # evaluations (Askell et al. 2021) compare 3-6 responses of the same prompt: 88 prompts merge.
    for subset in ("helpful-base", "harmless-base", "helpful-rejection-sampled"):
        _, stats = group_rankings(read_preferences(f"hh-rlhf:{subset}"))
        assert stats["groups_merged"] == 0 and stats["k_max"] == 2
    out, stats = group_rankings(read_preferences("hhh-evals"))
    assert stats["input_rows"] == 438 and stats["prompts"] == 188
    assert stats["groups_merged"] == 88
    assert stats["k_histogram"] == {"2": 103, "3": 70, "4": 15, "5": 2, "6": 1}
    assert sum(len(r.comparisons()) for r in out) == 438  # nothing lost
