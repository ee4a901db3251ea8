"""``qa``: SQuAD v1.1 exact match and F1 (×100) of answers to a SQuAD-style QA set.

Predictions come from a JSONL file of ``{"id", "prediction"}`` lines (``--predictions``), from a
model (``--model DIR``: greedy answers from any HF causal-LM or encoder-decoder (T5) folder,
closed-book or with evidence retrieved from ``--index DIR`` and rendered with the rag ``--template``
the model was trained with),
or — from Python — from any ``predict(examples) -> {id: answer}`` callable passed as
``evals.run("qa", dataset=..., predict=fn)``.

Questions with no prediction score 0 and are counted in ``missing``; a prediction for an id the
dataset does not have is an error naming the file and line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger(__name__)

HEADLINE = ("exact_match", "f1")
WORST = ("f1", True)
WORST_COLUMNS = ("id", "question", "answers", "prediction", "f1")
EXAMPLE = ("wandao eval qa --dataset xquad-en --predictions preds.jsonl --json\n"
           "  wandao eval qa --dataset xquad-en:test --model runs/demo/pretrain/final --index runs/demo/rag/index "
           "--template sparrow -k 3 --json")


@dataclass
class Config:
    dataset: str = field(default="xquad-en", metadata={"help": "SQuAD-style QA set (name, folder or .jsonl/.json)"})
    predictions: str | None = field(default=None, metadata={"help": "JSONL of {\"id\", \"prediction\"}"})
    predict: Callable | None = field(default=None, metadata={"cli": False,
                                                             "help": "Python only: examples -> {id: answer}"})
    model: str | None = field(default=None, metadata={"help": "generate answers with this HF causal-LM or T5 folder"})
    index: str | None = field(default=None, metadata={
        "help": "with --model: retrieve evidence from this index (omit for closed-book answers)"})
    retriever: str | None = field(default=None, metadata={
        "help": "bm25, dense, hybrid or lucene (default: the index's)"})
    template: str = field(default="sparrow", metadata={"help": "rag evidence template the model was trained with"})
    k: int = field(default=3, metadata={"help": "passages per question", "flags": ["-k"]})
    passage_tokens: int | None = field(default=None, metadata={
        "help": "token budget per passage block, as in training (default: the template's)"})
    total_tokens: int | None = field(default=None, metadata={
        "help": "token budget for all passage blocks, as in training (default: the template's)"})
    max_new_tokens: int = field(default=32, metadata={"help": "answer length cap in tokens"})
    batch_size: int = field(default=16, metadata={"help": "questions per generation batch"})

    def __post_init__(self) -> None:
        given = [self.predictions is not None, self.predict is not None, self.model is not None]
        if sum(given) != 1:
            raise ValueError("qa needs exactly one of --predictions FILE (JSONL lines {\"id\", \"prediction\"}) or "
                             "--model DIR (generate; add --index DIR for evidence); from Python, predict= also works")


_CITATION = re.compile(r"\s*\[\d+\]")


def generate_predictions(cfg: Config, examples: list[dict]) -> dict[str, str]:
    """Greedy answers from ``cfg.model`` (see :func:`generate_answers`), citation markers removed."""
    return {qid: _CITATION.sub("", raw).strip() for qid, (raw, _) in generate_answers(cfg, examples).items()}


def generate_answers(cfg: Config, examples: list[dict]) -> dict[str, tuple[str, list[dict]]]:
    """Greedy answers from ``cfg.model``, with evidence from ``cfg.index`` rendered by ``cfg.template``.

    The prompt is exactly what the model saw in training (the rag template's prompt part, with the
    same passage cleaning and token budgets); the answer stops at the first newline. Returns
    ``{id: (raw answer with its [n] markers, passages shown as {"id", "title", "text"})}``.
    """
    from pretrain.generate import GenerationConfig, generate, load_model
    from rag.templates import Budget, Example, Passage, get_template
    from rag.tokenizer import load_tokenizer

    model, tokenizer = load_model(cfg.model)
    budget = {k: v for k, v in (("passage_tokens", cfg.passage_tokens), ("total_tokens", cfg.total_tokens))
              if v is not None}
    template = get_template(cfg.template, load_tokenizer(tokenizer), Budget(**budget, min_passages=0)
                            if budget else None)
    retriever = None
    if cfg.index is not None:
        from rag.retriever import Retriever

        retriever = Retriever(cfg.index, retriever=cfg.retriever)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0, stop=["\n"])
    out: dict[str, tuple[str, list[dict]]] = {}
    for start in range(0, len(examples), cfg.batch_size):
        batch = examples[start:start + cfg.batch_size]
        passages: list[list] = [[] for _ in batch]
        if retriever is not None:
            res = retriever.retrieve([" ".join(e["question"].split()) for e in batch], k=cfg.k)
            for i in range(len(batch)):
                passages[i] = [template.clean_passage(Passage(d["id"], d.get("title", ""), d.get("text", ""), s))
                               for d, s in zip(res.documents[i], res.scores[i].tolist())]
        rendered = template.render_many([Example(question=e["question"], answer="", passages=ps)
                                         for e, ps in zip(batch, passages)], passages_are_clean=True)
        for e, r, ps, gen_out in zip(batch, rendered, passages,
                                     generate(model, tokenizer, [r.prompt for r in rendered], gen)):
            by_id = {p.doc_id: p for p in ps}
            shown = [{"id": d, "title": by_id[d].title, "text": by_id[d].text} for d in r.evidence_ids]
            out[e["id"]] = (gen_out.text, shown)
    return out


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
    answers: dict[str, tuple[str, list[dict]]] = {}
    if cfg.predictions is not None:
        preds = load_predictions(cfg.predictions, set(golds))
    elif cfg.model is not None:
        answers = generate_answers(cfg, examples)
        preds = {qid: _CITATION.sub("", raw).strip() for qid, (raw, _) in answers.items()}
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
        if e["id"] in answers:  # the cited answer and its evidence: `wandao eval attribution --input` reads these
            rows[-1]["answer"], rows[-1]["passages"] = answers[e["id"]]
    return metrics, rows
