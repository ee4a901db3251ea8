"""`wandao eval` end to end on small fixtures: qa, retrieval from a run file, bad input, help."""

import json

import pytest

from wandao.cli import main

SQUAD = [
    {"id": "a", "title": "T", "context": "c", "question": "Who won?", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}},
    {"id": "b", "title": "T", "context": "c", "question": "Where?", "answers": {"text": ["Levi's Stadium", "Santa Clara"], "answer_start": [0, 0]}},
    {"id": "c", "title": "T", "context": "c", "question": "When?", "answers": {"text": ["February 7, 2016"], "answer_start": [0]}},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_qa_scores_given_predictions(tmp_path, capsys):
    data = _write_jsonl(tmp_path / "squad.jsonl", SQUAD)
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": "a", "prediction": "the Denver Broncos."},
                                                    {"id": "b", "prediction": "Santa Clara, California"}])
    rc = main(["eval", "qa", "--dataset", str(data), "--predictions", str(preds), "--out", str(tmp_path / "run"), "--json"])
    assert rc == 0
    metrics = _last_json(capsys)
    # a: EM 1, F1 1. b: EM 0; F1 vs "santa clara": P=2/3, R=1 -> 0.8. c: missing -> 0.
    assert metrics["count"] == 3 and metrics["missing"] == 1
    assert metrics["exact_match"] == pytest.approx(100 / 3)
    assert metrics["f1"] == pytest.approx(100 * 1.8 / 3)
    rows = [json.loads(l) for l in (tmp_path / "run" / "per_example.jsonl").read_text().splitlines()]
    assert [r["missing"] for r in rows] == [False, False, True]


def test_qa_unknown_id_names_file_and_line(tmp_path, capsys):
    data = _write_jsonl(tmp_path / "squad.jsonl", SQUAD)
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": "a", "prediction": "x"}, {"id": "zzz", "prediction": "y"}])
    assert main(["eval", "qa", "--dataset", str(data), "--predictions", str(preds), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "preds.jsonl, line 2 (field 'id')" in err and "'zzz' is not a question" in err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_retrieval_from_a_run_file(beir_dir, tmp_path, capsys):
    run_out = tmp_path / "rescored.trec"
    rc = main(["eval", "retrieval", "--dataset", str(beir_dir), "--run", str(beir_dir / "run-a.trec"),
               "--run-out", str(run_out), "--out", str(tmp_path / "run"), "--json"])
    assert rc == 0
    metrics = _last_json(capsys)
    assert {"ndcg@10", "recall@100", "recall@1000", "mrr@10", "map", "queries"} <= set(metrics)
    assert metrics["queries"] == 3 and metrics["recall@100"] == pytest.approx((1 + 1 + 0) / 3)
    # the written run no longer holds q1's own id
    assert run_out.read_text().splitlines()[0] == "q1 Q0 d1 1 8.000000 wandao"


def test_retrieval_needs_an_index_or_a_run(beir_dir, capsys):
    assert main(["eval", "retrieval", "--dataset", str(beir_dir)]) == 2
    assert "--index DIR" in capsys.readouterr().err
    assert main(["eval", "nope"]) == 2


@pytest.mark.parametrize("name", ["retrieval", "odqa-retrieval", "qa", "attribution", "feedback-mc", "lm",
                                  "report", "compare", "regress"])
def test_every_subcommand_help_has_a_runnable_example(name, capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"wandao eval {name}" in out


def test_attribution_cli_with_lexical_judge(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "answers.jsonl", [{
        "id": "x", "sentences": ["Paris is the capital of France.", "Lyon is the capital of France."],
        "citations": [["p2"], ["p3"]],
        "passages": {"p2": {"title": "Paris", "text": "Paris is the capital of France."},
                     "p3": {"title": "Lyon", "text": "Lyon is known for its cuisine."}}}])
    assert main(["eval", "attribution", "--input", str(path), "--out", str(tmp_path / "run"), "--json"]) == 0
    metrics = _last_json(capsys)
    assert metrics["citation_rec"] == 50.0 and metrics["citation_prec"] == 50.0
    assert metrics["judge"] == "lexical(threshold=0.75)"
