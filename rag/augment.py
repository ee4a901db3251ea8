"""Retrieval-augmented SFT and RL data: retrieve for each prompt, render with a template, write JSONL.

SFT (:func:`augment_sft`, ``wandao augment sft``)
    Each input row (QA, prompt/response, chat or hh-rlhf, see :mod:`rag.data`) gets the top-k
    documents for its question (or ``query_field``), rendered with a template. Mixing, decided per
    example by a hash of ``(seed, id)`` so it does not depend on batch order:

    - ``no_evidence_fraction``: rendered with no search at all; the target stays the answer
      (``no_evidence_target=answer``, RA-DIT's mix) or becomes the abstention
      (``no_evidence_target=abstain``);
    - ``distractor_fraction``: rendered with distractors only: retrieved documents that are
      not the gold document and contain none of the answers; the target is ``abstain_answer``
      ("I could not find this…"), so the model learns not to invent what the evidence lacks
      (RA-DIT, Lin et al. 2023; Sparrow, Glaese et al. 2022).

    Output lines: ``id``, ``prompt`` (what the model reads, evidence included), ``response``,
    ``evidence_ids`` (citation order: ``[1]`` first), plus ``template``, ``mode``
    (``evidence``/``distractor``/``none``), ``query``, ``scores``, ``truncated``, ``answers``,
    ``gold_ids`` and ``meta`` (other input fields).

RL (:func:`augment_rl`, ``wandao augment rl``)
    Prompts for PPO: ``id``, ``prompt`` (rendered, evidence included; ``response`` is not
    written), ``evidence_ids``, ``query``, ``reference`` (the dataset's answer, if any), ``answers``
    and ``retrieval`` (index path, fingerprint, retriever, k, template) so a trainer can re-fetch
    at rollout time. With ``defer=True`` no retrieval happens now: the prompt is rendered without
    evidence and ``retrieval`` tells the trainer how to fetch it.

Both stream their input in batches (one backend call per batch), show a tqdm bar, and write the
output atomically.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

from pretrain.config import Config, ConfigError, check_range
from rag.data import QAItem, iter_items, load_id_list
from rag.templates import ABSTAIN_ANSWER, Budget, Example, Passage, Template, get_template

logger = logging.getLogger(__name__)

TemplateName = Literal["sparrow", "lamda", "docs", "search-r1"]


@dataclass
class SFTAugmentConfig(Config):
    """``wandao augment sft``: retrieval-augmented SFT examples."""

    index: str = field(default="", metadata={"help": "index directory (wandao index build)"})
    data: str = field(default="", metadata={"help": "input: JSONL/parquet/HF dataset or a split name (xquad-en:train)"})
    out: str = field(default="", metadata={"help": "output JSONL file"})
    template: TemplateName = field(default="sparrow", metadata={"help": "evidence template"})
    k: int = field(default=3, metadata={"help": "documents per example"})
    retriever: str | None = field(default=None, metadata={"help": "bm25|lucene|dense|hybrid (default: the index's)"})
    exclude_ids: str | None = field(default=None, metadata={"help": "file of document ids never to retrieve"})
    query_field: str | None = field(default=None, metadata={"help": "input field holding the search query"})
    no_evidence_fraction: float = field(default=0.0, metadata={"help": "fraction rendered without search"})
    distractor_fraction: float = field(default=0.0, metadata={"help": "fraction with distractor-only evidence"})
    no_evidence_target: Literal["answer", "abstain"] = field(
        default="answer", metadata={"help": "target of no-evidence examples: the answer or the abstention"})
    abstain_answer: str = field(default=ABSTAIN_ANSWER, metadata={"help": "target when the evidence lacks the answer"})
    cite: bool = field(default=False, metadata={"help": "append [i] of the first passage holding the answer"})
    seed: int = field(default=0, metadata={"help": "seed for the per-example mix"})
    batch_size: int = field(default=256, metadata={"help": "queries per retrieval call"})
    tokenizer: str = field(default="minilm", metadata={"help": "tokenizer for budgets: a tokenizer.json/folder or minilm"})
    passage_tokens: int = field(default=160, metadata={"help": "token budget per passage block"})
    total_tokens: int = field(default=512, metadata={"help": "token budget for all passage blocks"})
    min_passages: int = field(default=1, metadata={"help": "fewest passages that must fit (else an error)"})
    cache: str | None = field(default=None, metadata={"help": "retrieval cache directory ('default' = ~/.cache)"})
    limit: int | None = field(default=None, metadata={"help": "stop after this many input rows"})

    def __post_init__(self) -> None:
        check_range("k", self.k, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("no_evidence_fraction", self.no_evidence_fraction, 0.0, 1.0)
        check_range("distractor_fraction", self.distractor_fraction, 0.0, 1.0)
        if self.no_evidence_fraction + self.distractor_fraction > 1.0:
            raise ConfigError(f"no_evidence_fraction + distractor_fraction = "
                              f"{self.no_evidence_fraction + self.distractor_fraction} exceeds 1", "distractor_fraction")


@dataclass
class RLAugmentConfig(Config):
    """``wandao augment rl``: prompts with evidence (or retrieval settings) for PPO."""

    data: str = field(default="", metadata={"help": "input prompts: JSONL/HF dataset or a split (hh-rlhf:helpful-base)"})
    out: str = field(default="", metadata={"help": "output JSONL file"})
    index: str = field(default="", metadata={"help": "index directory"})
    template: TemplateName = field(default="search-r1", metadata={"help": "evidence template"})
    k: int = field(default=3, metadata={"help": "documents per prompt"})
    retriever: str | None = field(default=None, metadata={"help": "bm25|lucene|dense|hybrid"})
    defer: bool = field(default=False, metadata={"help": "do not retrieve now; record settings for rollout time"})
    exclude_ids: str | None = field(default=None, metadata={"help": "file of document ids never to retrieve"})
    query_field: str | None = field(default=None, metadata={"help": "input field holding the search query"})
    batch_size: int = field(default=256, metadata={"help": "queries per retrieval call"})
    tokenizer: str = field(default="minilm", metadata={"help": "tokenizer for budgets"})
    passage_tokens: int = field(default=160, metadata={"help": "token budget per passage block"})
    total_tokens: int = field(default=512, metadata={"help": "token budget for all passage blocks"})
    cache: str | None = field(default=None, metadata={"help": "retrieval cache directory ('default' = ~/.cache)"})
    limit: int | None = field(default=None, metadata={"help": "stop after this many input rows"})

    def __post_init__(self) -> None:
        check_range("k", self.k, 1)
        check_range("batch_size", self.batch_size, 1)


def example_unit(seed: int, example_id: str) -> float:
    """A uniform number in [0, 1) from ``(seed, id)``: the per-example mixing draw."""
    h = hashlib.sha256(f"{seed}\x00{example_id}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _contains_answer(doc: dict, answers: list[str]) -> bool:
    text = (doc.get("title", "") + " " + doc.get("text", "")).lower()
    return any(a.strip() and a.strip().lower() in text for a in answers)


def _cache_arg(cache: str | None):
    return True if cache == "default" else cache


def _passages(template: Template, pairs: list[tuple[dict, float]]) -> list[Passage]:
    """Sanitised passages (cleaned once per document by the template's cache), with their scores."""
    out = []
    for doc, score in pairs:
        p = template.clean_passage(Passage(doc["id"], doc.get("title", ""), doc.get("text", ""), score))
        out.append(p)
    return out


def _batched(items: Iterable[QAItem], n: int, limit: int | None) -> Iterator[list[QAItem]]:
    batch: list[QAItem] = []
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            break
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def sft_records(items: Iterable[QAItem], retriever, template: Template, cfg: SFTAugmentConfig,
                exclude_ids: set[str] | None = None, stats: dict | None = None) -> Iterator[dict]:
    """Yield augmented SFT records for ``items``, retrieving one batch at a time.

    Args:
        items: inputs (:func:`rag.data.iter_items`).
        retriever: a :class:`rag.Retriever`.
        template: a template with a tokenizer and budget (:func:`rag.templates.get_template`).
        cfg: mixing, k, batch size, targets.
        exclude_ids: documents never to use as evidence.
        stats: if given, counts per mode are added to it.
    """
    from tqdm.auto import tqdm

    stats = stats if stats is not None else {}
    excluded = frozenset(exclude_ids or ())
    distractor_depth = cfg.k * 4 + 10
    bar = tqdm(desc="augment sft", unit="ex", disable=_quiet())
    for batch in _batched(items, cfg.batch_size, cfg.limit):
        modes = []
        for item in batch:
            u = example_unit(cfg.seed, item.id)
            modes.append("none" if u < cfg.no_evidence_fraction
                         else "distractor" if u < cfg.no_evidence_fraction + cfg.distractor_fraction else "evidence")
        hits: dict[int, list[tuple[dict, float]]] = {}
        for mode, depth in (("evidence", cfg.k), ("distractor", distractor_depth)):
            idx = [i for i, m in enumerate(modes) if m == mode]
            if not idx:
                continue
            queries = [_query(batch[i]) for i in idx]
            excl = [excluded | set(batch[i].gold_ids) if mode == "distractor" else excluded for i in idx]
            res = retriever.retrieve(queries, k=depth, exclude_ids=excl)
            scores = res.scores.tolist()
            for row, i in enumerate(idx):
                pairs = list(zip(res.documents[row], scores[row]))  # documents: the row's real hits
                if mode == "distractor":
                    pairs = [(d, s) for d, s in pairs if not _contains_answer(d, batch[i].answers)][:cfg.k]
                    if not pairs:
                        modes[i] = "none"  # nothing retrieved lacks the answer: fall back to no evidence
                        stats["distractor_fallbacks"] = stats.get("distractor_fallbacks", 0) + 1
                hits[i] = pairs
        examples, batch_passages = [], []
        for i, item in enumerate(batch):
            mode = modes[i]
            ps = _passages(template, hits.get(i, [])) if mode != "none" else []
            if mode == "distractor" or (mode == "none" and cfg.no_evidence_target == "abstain"):
                target = cfg.abstain_answer
            else:
                target = item.answer
            examples.append(Example(question=item.question, answer=target, passages=ps, query=item.query,
                                    history=item.history))
            batch_passages.append(ps)
        rendered = template.render_many(examples, passages_are_clean=True)
        for i, (item, r, ps) in enumerate(zip(batch, rendered, batch_passages)):
            mode = modes[i]
            if cfg.cite and mode == "evidence" and item.answers:
                docs = {p.doc_id: p for p in ps}
                for j, doc_id in enumerate(r.evidence_ids, start=1):
                    if _contains_answer({"text": docs[doc_id].text}, item.answers):
                        r.response = template.add_citation(r.response, f"[{j}]")
                        break
            stats[mode] = stats.get(mode, 0) + 1
            scores = {p.doc_id: p.score for p in ps}
            yield {"id": item.id, "prompt": r.prompt, "response": r.response, "evidence_ids": r.evidence_ids,
                   "template": r.name, "mode": mode, "query": r.query,
                   "scores": [round(scores[d], 6) for d in r.evidence_ids], "truncated": r.truncated,
                   "answers": item.answers, "gold_ids": item.gold_ids, "meta": item.extra}
        bar.update(len(batch))
    bar.close()


def _query(item: QAItem) -> str:
    return " ".join((item.query if item.query is not None else item.question).split())


def _quiet() -> bool:
    import os

    return os.environ.get("WANDAO_NO_PROGRESS", "") not in ("", "0")


def _open(cfg, needs_index: bool = True):
    from rag.retriever import Retriever
    from rag.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    budget = Budget(passage_tokens=cfg.passage_tokens, total_tokens=cfg.total_tokens,
                    min_passages=getattr(cfg, "min_passages", 1))
    template = get_template(cfg.template, tok, budget)
    retriever = Retriever(cfg.index, retriever=cfg.retriever, cache=_cache_arg(cfg.cache),
                          batch_size=cfg.batch_size) if needs_index else None
    return retriever, template


def augment_sft(cfg: SFTAugmentConfig) -> dict:
    """Write the retrieval-augmented SFT set described by ``cfg``; returns a summary dict.

    Example:
        >>> augment_sft(SFTAugmentConfig(index="runs/xquad-index", data="xquad-en:train",
        ...                              out="runs/xquad-sft.jsonl", template="sparrow", k=3))  # doctest: +SKIP
        {'examples': 946, 'evidence': 946, ...}
    """
    from indexer.data import write_jsonl

    for name in ("index", "data", "out"):
        if not getattr(cfg, name):
            raise ConfigError("is required", name)
    t0 = time.perf_counter()
    retriever, template = _open(cfg)
    exclude = load_id_list(cfg.exclude_ids) if cfg.exclude_ids else set()
    stats: dict = {}
    n = write_jsonl(cfg.out, sft_records(iter_items(cfg.data, cfg.query_field), retriever, template, cfg,
                                         exclude, stats))
    seconds = time.perf_counter() - t0
    summary = {"examples": n, **stats, "template": template.name + f"@{template.version}", "k": cfg.k,
               "out": cfg.out, "seconds": round(seconds, 2), "examples_per_s": round(n / max(seconds, 1e-9), 1)}
    logger.info("augment sft: %s", summary)
    return summary


def rl_records(items: Iterable[QAItem], retriever, template: Template, cfg: RLAugmentConfig,
               exclude_ids: set[str] | None = None) -> Iterator[dict]:
    """Yield PPO prompt records for ``items`` (see the module docstring)."""
    from tqdm.auto import tqdm

    excluded = frozenset(exclude_ids or ())
    retrieval = {"index": str(Path(cfg.index).resolve()) if cfg.index else None,
                 "fingerprint": retriever.fingerprint if retriever is not None else None,
                 "retriever": retriever.retriever if retriever is not None else cfg.retriever,
                 "k": cfg.k, "template": f"{template.name}@{template.version}",
                 "exclude_ids": sorted(excluded) if cfg.defer else None}
    bar = tqdm(desc="augment rl", unit="prompt", disable=_quiet())
    for batch in _batched(items, cfg.batch_size, cfg.limit):
        if cfg.defer:
            hits = [[] for _ in batch]
        else:
            res = retriever.retrieve([_query(it) for it in batch], k=cfg.k, exclude_ids=excluded or None)
            hits = [_passages(template, [(h.document, h.score) for h in res.hits(i)]) for i in range(len(batch))]
        rendered = template.render_many([Example(question=item.question, answer="", passages=ps, query=item.query,
                                                 history=item.history) for item, ps in zip(batch, hits)],
                                        passages_are_clean=True)
        for item, r in zip(batch, rendered):
            yield {"id": item.id, "prompt": r.prompt, "evidence_ids": r.evidence_ids, "query": _query(item),
                   "template": r.name, "reference": item.answer, "answers": item.answers,
                   "history": [list(t) for t in item.history], "question": item.question,
                   "retrieval": retrieval, "meta": item.extra}
        bar.update(len(batch))
    bar.close()


def augment_rl(cfg: RLAugmentConfig) -> dict:
    """Write RL prompts with evidence (or deferred retrieval settings); returns a summary dict."""
    from indexer.data import write_jsonl

    for name in ("data", "out") + (() if cfg.defer else ("index",)):
        if not getattr(cfg, name):
            raise ConfigError("is required" + ("" if name != "index" else " (or pass --defer)"), name)
    t0 = time.perf_counter()
    retriever, template = _open(cfg, needs_index=not cfg.defer)
    exclude = load_id_list(cfg.exclude_ids) if cfg.exclude_ids else set()
    n = write_jsonl(cfg.out, rl_records(iter_items(cfg.data, cfg.query_field), retriever, template, cfg, exclude))
    summary = {"prompts": n, "template": f"{template.name}@{template.version}", "deferred": cfg.defer,
               "out": cfg.out, "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("augment rl: %s", summary)
    return summary
