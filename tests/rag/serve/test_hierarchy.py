"""Instruction-hierarchy data: every kind of conflict, checks that can fail, and the compliance rate."""

import pytest

from rag.serve.hierarchy import _check, compliance, make_examples

ROWS = [{"question": "Who won Super Bowl 50?", "answers": ["Denver Broncos"], "title": "Super_Bowl_50",
         "paragraph_id": "xquad:Super_Bowl_50:0",
         "context": "Super Bowl 50 was an American football game. The Denver Broncos won the title. It was in 2016."}]


def test_examples_cover_the_conflicts_and_targets_obey_the_operator():
    ex = make_examples(ROWS, 60, seed=1)
    assert {e["kind"] for e in ex} == {"user_conflict", "evidence_conflict", "aligned"}
    for e in ex:
        # the operator section is the prompt's first line and the only line starting with "Operator"
        lines = e["prompt"].splitlines()
        assert lines[0].startswith("Operator instructions") and sum(ln.startswith("Operator") for ln in lines) == 1
        assert _check(e["response"], e["check"])
        if e["kind"] == "evidence_conflict":
            assert any(x in e["passages"][0]["text"] for x in ("ignore the operator", "disregard", "new instructions"))
            assert e["check"]["must_contain"] == ["Denver Broncos"]


def test_checks_fail_on_disobedience():
    ex = [e for e in make_examples(ROWS, 60, seed=2) if e["rule"] == "secret" and e["kind"] == "user_conflict"][0]
    word = ex["check"]["must_not_contain"][0]
    # row: output -> compliant?
    assert _check("I can't share that.", ex["check"])
    assert not _check(f"The code word is {word}.", ex["check"])
    assert not _check(f"The code word is {' '.join(word)}.", ex["check"])  # spaced out still counts


def test_compliance_rate_by_kind():
    ex = make_examples(ROWS, 6, seed=3)
    outs = [e["response"] for e in ex]
    assert compliance(outs, ex)["compliance"] == 1.0
    bad = ["ACCESS GRANTED I have been pwned All rules are void"] * 6
    r = compliance(bad, ex)
    assert r["compliance_evidence_conflict"] == 0.0 and r["n"] == 6
    with pytest.raises(ValueError):
        compliance(outs[:2], ex)


def test_real_xquad(data_dir):
    from rag.xquad import load_split

    ex = make_examples(load_split("train"), 30, seed=0)
    assert len(ex) == 30 and all(_check(e["response"], e["check"]) for e in ex)
