"""align.labels: sheet export (CSV/JSONL), import of choices and ranks, malformed rows rejected with their row number."""

from __future__ import annotations

import csv
import json

import pytest

from align.labels import LabelError, export_sheet, import_labels

SAMPLES = [
    {"prompt_id": "q1", "question": "Who won?", "evidence": [{"id": "d1", "title": "SB50", "text": "Denver won."}],
     "responses": ["Denver", "Carolina", "I could not find this."], "rewards": [0.9, -0.2, 0.1]},
    {"prompt_id": "q2", "question": "Where?", "evidence": [], "responses": ["Santa Clara", "Paris, \"France\"\nok", "x"]},
]


def _csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for r in rows:
            w.writerow(r)
    return path


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_export_csv_round_trips_and_carries_evidence_and_scores(tmp_path):
    path = export_sheet(SAMPLES, tmp_path / "sheet.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6  # 3 candidates x 2 prompts
    assert rows[0] == {"prompt_id": "q1", "candidate": "0", "question": "Who won?", "evidence": "[1] SB50: Denver won.",
                       "response": "Denver", "rm_score": "0.9", "choice": "", "rank": ""}
    assert rows[4]["response"] == "Paris, \"France\"\nok" and rows[4]["rm_score"] == ""  # quotes, newline, no RM
    # an unfilled sheet labels nothing
    assert import_labels(path, SAMPLES) == {}


def test_choices_and_ranks_from_a_filled_csv(tmp_path):
    path = export_sheet(SAMPLES, tmp_path / "sheet.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows[2]["choice"] = "1"  # q1: candidate 2 chosen
    rows[3]["rank"], rows[4]["rank"], rows[5]["rank"] = "3", "1", "2"  # q2 ranked: candidate 1 best
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    labels = import_labels(filled, SAMPLES)
    assert labels["q1"].best == 2 and labels["q1"].ranks is None
    assert labels["q2"].best == 1 and labels["q2"].ranks == [3, 1, 2]


def test_compact_rows_and_rejections(tmp_path):
    path = _jsonl(tmp_path / "l.jsonl", [{"prompt_id": "q1", "ranks": [2, None, 1]},
                                         *[{"prompt_id": "q2", "candidate": j, "choice": 0} for j in range(3)]])
    labels = import_labels(path, SAMPLES)
    assert labels["q1"].best == 2 and labels["q1"].ranks == [2, None, 1]
    assert labels["q2"].best is None  # every candidate rejected


# Each malformed row: (rows, the row number and field the error must name, words of the message).
HEADER = ["prompt_id", "candidate", "response", "choice", "rank"]
BAD_CSV = [
    ([HEADER, ["q1", "0", "Denver", "1", ""], ["q9", "0", "", "1", ""]], 3, "prompt_id", "unknown prompt"),
    ([HEADER, ["q1", "3", "", "1", ""]], 2, "candidate", "0..2"),  # only 3 candidates
    ([HEADER, ["q1", "one", "", "1", ""]], 2, "candidate", "expected an integer"),
    ([HEADER, ["q1", "0", "", "maybe", ""]], 2, "choice", "choice is 1"),
    ([HEADER, ["q1", "0", "", "", "0"]], 2, "rank", "1..3"),
    ([HEADER, ["q1", "0", "", "1", ""], ["q1", "1", "", "1", ""]], 3, "choice", "second choice"),
    ([HEADER, ["q1", "0", "", "", "1"], ["q1", "1", "", "", "2"], ["q1", "2", "", "", "1"]], 4, "rank", "twice"),
    ([HEADER, ["q1", "0", "", "1", ""], ["q1", "0", "", "0", ""]], 3, "candidate", "appears twice"),
    ([HEADER, ["q1", "1", "Denver", "1", ""]], 2, "response", "differs"),  # candidate 1 is Carolina
    ([HEADER, ["q1", "0", "", "0", "1"]], 2, "rank", "contradicts"),
    ([HEADER, ["", "0", "", "1", ""]], 2, "prompt_id", "missing"),
    ([HEADER, ["q1", "0", "", "1", "", "extra"]], 2, None, "more cells"),
    ([["prompt", "cand"], ["q1", "0"]], 1, None, "header lacks prompt_id, candidate"),
]


@pytest.mark.parametrize("rows,row,field,words", BAD_CSV)
def test_malformed_csv_rows_name_their_row(tmp_path, rows, row, field, words):
    path = _csv(tmp_path / "labels.csv", rows)
    with pytest.raises(LabelError) as err:
        import_labels(path, SAMPLES)
    msg = str(err.value)
    assert msg.startswith(f"{path}, row {row}") and words in msg
    if field:
        assert f"(field {field!r})" in msg
    assert err.value.line == row


BAD_JSONL = [
    (['{"prompt_id": "q1", "candidate": 0, "choice": 1}', '{"prompt_id": "q2", "candidate": 0,'], 2, "malformed JSON"),
    (['{"prompt_id": "q1", "best": 5}'], 1, "0..2"),
    (['{"prompt_id": "q1", "ranks": [1, 2]}'], 1, "2 ranks for 3 candidates"),
    (['{"prompt_id": "q1", "ranks": [1, 1, 2]}'], 1, "distinct"),
    (['{"prompt_id": "q1", "best": 0}', '{"prompt_id": "q1", "best": 1}'], 2, "labelled twice"),
    (['{"prompt_id": "q1", "note": "?"}'], 1, "needs best"),
    (['["q1", 0]'], 1, "expected an object"),
    (['{"prompt_id": "q1", "candidate": true, "choice": 1}'], 1, "expected an integer"),
]


@pytest.mark.parametrize("lines,row,words", BAD_JSONL)
def test_malformed_jsonl_rows_name_their_row(tmp_path, lines, row, words):
    path = _jsonl(tmp_path / "labels.jsonl", lines)
    with pytest.raises(LabelError, match=rf"labels\.jsonl, row {row}\b.*{words}"):
        import_labels(path, SAMPLES)


def test_missing_file_and_unknown_sheet_format(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        import_labels(tmp_path / "none.csv", SAMPLES)
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        export_sheet(SAMPLES, tmp_path / "sheet.xlsx")
