"""``attribution``: ALCE citation recall and precision of cited answers (see :mod:`evals.alce`).

Input: a JSONL file, one answer per line::

    {"id": "q1",
     "sentences": ["Paris is the capital of France.", "It has 2.1 million people."],   # or "answer": "..."
     "citations": [["d1"], ["d1", "d7"]],        # doc ids cited by each sentence
     "passages": [{"id": "d1", "title": "Paris", "text": "..."}, ...],   # or {"d1": {...}}, or omit + --index
     "answers": ["Paris"]}                       # optional gold spans (the lexical judge uses them)

- ``sentences`` gives the sentences; otherwise ``answer`` is split into sentences.
- ``citations`` is one list of doc ids per sentence. Without it, ALCE's inline markers in the
  answer (``... France [1][2].``) cite passages by 1-based position in ``passages``.
- ``passages`` holds the cited documents; with ``--index DIR`` missing ones are looked up in the
  index's docstore instead.

The judge is ``lexical`` (no model), ``nli`` (``--judge-model`` HF NLI folder) or ``openai``
(``--judge-url``, ``--judge-model``); ``metrics["judge"]`` names the one used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

HEADLINE = ("citation_rec", "citation_prec")
WORST = ("recall", True)
WORST_COLUMNS = ("id", "recall", "precision", "citations", "sentences")
EXAMPLE = "wandao eval attribution --input answers.jsonl --judge lexical --json"


@dataclass
class Config:
    input: str = field(default="", metadata={"help": "JSONL of cited answers (format in the module docstring)"})
    index: str | None = field(default=None, metadata={"help": "index whose docstore resolves cited ids"})
    judge: str = field(default="lexical", metadata={"help": "entailment judge",
                                                    "choices": ("lexical", "nli", "openai")})
    judge_model: str | None = field(default=None, metadata={"help": "NLI model folder, or the endpoint's model name"})
    judge_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL (judge openai)"})
    lexical_threshold: float = field(default=0.75, metadata={"help": "content-word coverage for the lexical judge"})
    at_most_citations: int | None = field(default=3, metadata={"help": "citations per sentence considered (ALCE: 3)"})

    def __post_init__(self) -> None:
        if not self.input:
            raise ValueError("attribution needs --input FILE.jsonl")
        if self.judge not in ("lexical", "nli", "openai"):
            raise ValueError(f"--judge must be one of lexical, nli, openai; got {self.judge!r}")


def load_items(path: str, index_dir: str | None = None):
    """Parse the input JSONL into :class:`evals.alce.CitedAnswer` items (ids kept alongside)."""
    from evals.alce import CitedAnswer, inline_citations, split_sentences
    from indexer.data import DataError, iter_jsonl

    items, ids, wanted = [], [], set()
    for line, obj in iter_jsonl(path):
        qid = str(obj.get("id", line))
        raw_passages = obj.get("passages", [])
        order: list[str] = []
        passages: dict[str, dict] = {}
        if isinstance(raw_passages, dict):
            passages = {str(k): v for k, v in raw_passages.items()}
            order = list(passages)
        elif isinstance(raw_passages, list):
            for j, p in enumerate(raw_passages):
                if not isinstance(p, dict) or not isinstance(p.get("text", p.get("sent")), str):
                    raise DataError(path, f"passage {j} must be an object with a text", line, field="passages")
                key = str(p.get("id", j + 1))
                passages[key] = p
                order.append(key)
        else:
            raise DataError(path, "passages must be a list or an object", line, field="passages")
        if "sentences" in obj:
            sents = obj["sentences"]
            if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
                raise DataError(path, "sentences must be a list of strings", line, field="sentences")
        elif isinstance(obj.get("answer"), str):
            sents = split_sentences(obj["answer"])
        else:
            raise DataError(path, "each line needs 'sentences' (list) or 'answer' (string)", line, field="answer")
        if "citations" in obj:
            cits = obj["citations"]
            if not isinstance(cits, list) or len(cits) != len(sents) or not all(isinstance(c, list) for c in cits):
                raise DataError(path, f"citations must be one list of doc ids per sentence ({len(sents)} sentences)",
                                line, field="citations")
            cits = [[str(c) for c in cs] for cs in cits]
        else:
            # ALCE inline markers: [n] is the n-th passage; out of range stays unresolvable (unsupported)
            cits = [[order[i] if 0 <= i < len(order) else f"#{i + 1}" for i in inline_citations(s)] for s in sents]
        answers = obj.get("answers") or []
        if isinstance(answers, str):
            answers = [answers]
        for cs in cits:
            wanted.update(c for c in cs if c not in passages)
        items.append(CitedAnswer(sents, cits, passages, list(answers)))
        ids.append(qid)
    if wanted and index_dir:
        from indexer.index import open_index

        store = open_index(index_dir).docstore
        keys = sorted(wanted)
        found = {k: d for k, d in zip(keys, store.get(keys)) if d}
        for it in items:
            for cs in it.citations:
                for c in cs:
                    if c not in it.passages and c in found:
                        it.passages[c] = found[c]
    unresolved = sum(1 for it in items for cs in it.citations for c in cs if c not in it.passages)
    if unresolved:
        logger.warning("%d citations point to passages that are neither given nor in the index: "
                       "their sentences count as unsupported (ALCE)", unresolved)
    return ids, items


def suite(cfg: Config) -> tuple[dict, list[dict]]:
    from evals.alce import citation_scores
    from evals.entailment import make_judge

    ids, items = load_items(cfg.input, cfg.index)
    judge = make_judge(cfg.judge, model=cfg.judge_model, url=cfg.judge_url, threshold=cfg.lexical_threshold)
    metrics, per = citation_scores(items, judge, cfg.at_most_citations)
    rows = [{"id": qid, "recall": 100.0 * p["recall"], "precision": 100.0 * p["precision"],
             "citations": p["citations"], "sentences": p["sentences"]} for qid, p in zip(ids, per)]
    return metrics, rows
