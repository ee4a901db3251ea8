"""``qa``: SQuAD v1.1 exact match and F1 (×100) of answers to a SQuAD-style QA set.

Predictions come from a JSONL file of ``{"id", "prediction"}`` lines (``--predictions``), or —
from Python — from any ``predict(examples) -> {id: answer}`` callable passed as
``evals.run("qa", dataset=..., predict=fn)``. That callable is the extension point for generation:
the pretrain/align stages plug a wandao model (with or without retrieved evidence) in there.

Questions with no prediction score 0 and are counted in ``missing``; a prediction for an id the
dataset does not have is an error naming the file and line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger(__name__)

HEADLINE = ("exact_match", "f1")
WORST = ("f1", True)
WORST_COLUMNS = ("id", "question", "answers", "prediction", "f1")
EXAMPLE = "wandao eval qa --dataset xquad-en --predictions preds.jsonl --json"


@dataclass
class Config:
    dataset: str = field(default="xquad-en", metadata={"help": "SQuAD-style QA set (name, folder or .jsonl/.json)"})
    predictions: str | None = field(default=None, metadata={"help": "JSONL of {\"id\", \"prediction\"}"})
    predict: Callable | None = field(default=None, metadata={"cli": False,
                                                             "help": "Python only: examples -> {id: answer}"})

    def __post_init__(self) -> None:
        if (self.predictions is None) == (self.predict is None):
            raise ValueError("qa needs --predictions FILE (JSONL lines {\"id\", \"prediction\"}); "
                             "from Python, pass predictions= or predict=")


def load_predictions(path: str, known_ids: set[str]) -> dict[str, str]:
    """Read ``{"id", "prediction"}`` lines; unknown or repeated ids and bad fields raise DataError."""
    from indexer.data import DataError, iter_jsonl

    preds: dict[str, str] = {}
    for line, obj in iter_jsonl(path):
        qid = obj.get("id")
        if not isinstance(qid, (str, int)):
            raise DataError(path, "missing question id", line, field="id")
        qid = str(qid)
        pred = obj.get("prediction")
        if not isinstance(pred, str):
            raise DataError(path, f"prediction must be a string, got {type(pred).__name__}", line,
                            field="prediction")
        if qid not in known_ids:
            raise DataError(path, f"id {qid!r} is not a question of the dataset", line, field="id")
        if qid in preds:
            raise DataError(path, f"id {qid!r} is predicted twice", line, field="id")
        preds[qid] = pred
    return preds


def suite(cfg: Config) -> tuple[dict, list[dict]]:
    from evals.qa_data import load_qa, qa_path
    from evals.squad import exact_match_score, f1_score, metric_max_over_ground_truths, squad_evaluate

    examples = load_qa(cfg.dataset)
    golds = {e["id"]: e["answers"] for e in examples}
    if cfg.predictions is not None:
        preds = load_predictions(cfg.predictions, set(golds))
    else:
        preds = {str(k): v for k, v in cfg.predict(examples).items()}
        unknown = sorted(set(preds) - set(golds))
        if unknown:
            raise ValueError(f"predict() returned ids not in the dataset, e.g. {unknown[:3]}")
    metrics = squad_evaluate(golds, preds)
    if metrics["missing"]:
        logger.warning("%d of %d questions have no prediction and score 0", metrics["missing"], metrics["count"])
    metrics["dataset"] = str(qa_path(cfg.dataset))
    rows = []
    for e in examples:
        pred = preds.get(e["id"])
        rows.append({"id": e["id"], "question": e["question"], "answers": e["answers"], "prediction": pred,
                     "exact_match": 100.0 * metric_max_over_ground_truths(exact_match_score, pred, e["answers"])
                     if pred is not None else 0.0,
                     "f1": 100.0 * metric_max_over_ground_truths(f1_score, pred, e["answers"])
                     if pred is not None else 0.0,
                     "missing": pred is None})
    return metrics, rows
