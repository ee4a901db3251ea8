"""Retrieval-augmented pretraining data: neighbours prepended to each chunk, packed for the trainer.

For every document of the corpus (streamed):

1. Tokenise it and split it into chunks of ``chunk_tokens`` tokens (RETRO's 64 by default).
2. Retrieve ``k`` neighbours per chunk (the chunk's own text is the query, as RETRO's
   neighbour search; ``query="previous"`` uses the preceding chunk instead, In-Context RALM's
   causal choice, and the first chunk of a document then gets no neighbours). Excluded:
   every indexed passage of the same document and of the listed sources (RETRO's rule, as in
   Megatron-LM's RETRO query code; a passage's source is its ``doc_id`` field or the id before
   ``#``, see :func:`rag.retriever.source_of`), and near-duplicates whose word n-gram
   containment of the chunk is above ``max_ngram_overlap``.
3. Prepend the neighbours, In-Context RALM style (Ram et al. 2023): each neighbour's title
   and text (special tokens neutralised, cut to ``neighbour_tokens`` at a word boundary), then the
   chunk. ``loss_mask`` is 0 over the evidence and 1 over the chunk, so the model reads the
   evidence but is trained only to predict the original text.
4. Pack examples into rows of ``seq_len`` tokens (the trainer's ``block_size + 1``), several per
   row separated by EOS (mask 0), padding a row's tail with EOS (mask 0) when the next example
   does not fit; an example is never split across rows, so its evidence stays in its context.

Output: a token folder in the format of :mod:`pretrain.data` (``tokens.bin``, ``loss_mask.bin``,
``meta.json`` with ``seq_len``), plus ``chunks.jsonl``: per chunk its source document id, chunk
number, neighbour ids and scores, and where it lies (row, offset, evidence and chunk lengths).
``wandao augment pretrain --inspect DIR`` prints those lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

# Plain-text corpora (WikiText, tinyshakespeare) are read by the indexer, so `wandao index build` takes
# them too; the names stay importable from here.
from indexer.data import iter_corpus as iter_corpus_any
from indexer.data import iter_text_documents  # noqa: F401
from pretrain.config import Config, ConfigError, check_range

logger = logging.getLogger(__name__)

CHUNKS_FILE = "chunks.jsonl"
_WORD = re.compile(r"\w+")
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


@dataclass
class PretrainAugmentConfig(Config):
    """``wandao augment pretrain``: neighbours prepended to chunks, packed with a loss mask."""

    index: str = field(default="", metadata={"help": "index directory to retrieve neighbours from"})
    corpus: str = field(default="", metadata={"help": "corpus: dataset name, JSONL, or a text file (wikitext, tinyshakespeare)"})
    out: str = field(default="", metadata={"help": "output token folder"})
    k: int = field(default=2, metadata={"help": "neighbours per chunk"})
    chunk_tokens: int = field(default=64, metadata={"help": "tokens per chunk"})
    neighbour_tokens: int = field(default=64, metadata={"help": "most tokens kept per neighbour"})
    seq_len: int = field(default=513, metadata={"help": "packed row length (the model's block_size + 1)"})
    query: Literal["chunk", "previous"] = field(default="chunk", metadata={"help": "retrieval query per chunk"})
    retriever: str | None = field(default=None, metadata={"help": "bm25|lucene|dense|hybrid"})
    exclude_sources: str | None = field(default=None, metadata={"help": "file of source document ids to exclude"})
    max_ngram_overlap: float = field(default=0.5, metadata={"help": "drop neighbours containing more of the chunk's n-grams"})
    ngram: int = field(default=8, metadata={"help": "n for the near-duplicate check (words)"})
    tokenizer: str = field(default="minilm", metadata={"help": "tokenizer.json / tokenizer folder, or minilm"})
    batch_size: int = field(default=512, metadata={"help": "chunks per retrieval call"})
    cache: str | None = field(default=None, metadata={"help": "retrieval cache directory ('default' = ~/.cache)"})
    limit: int | None = field(default=None, metadata={"help": "stop after this many documents"})
    force: bool = field(default=False, metadata={"help": "replace an existing output folder"})

    def __post_init__(self) -> None:
        check_range("k", self.k, 0)
        check_range("chunk_tokens", self.chunk_tokens, 1)
        check_range("neighbour_tokens", self.neighbour_tokens, 1)
        check_range("max_ngram_overlap", self.max_ngram_overlap, 0.0, 1.0)
        check_range("ngram", self.ngram, 1)
        if self.seq_len < self.chunk_tokens + 2:
            raise ConfigError(f"got {self.seq_len}; must be at least chunk_tokens + 2 = {self.chunk_tokens + 2}",
                              "seq_len")


def ngram_containment(chunk: str, neighbour: str, n: int) -> float:
    """Fraction of ``chunk``'s word n-grams that occur in ``neighbour`` (0 when the chunk has none).

    Example:
        >>> ngram_containment("a b c d", "x a b c y", 2)  # ab, bc of ab, bc, cd
        0.6666666666666666
    """
    cw, nw = _WORD.findall(chunk.lower()), _WORD.findall(neighbour.lower())
    if len(cw) < n:
        return 0.0
    cg = {tuple(cw[i:i + n]) for i in range(len(cw) - n + 1)}
    ng = {tuple(nw[i:i + n]) for i in range(len(nw) - n + 1)}
    return len(cg & ng) / len(cg)


def _eos_id(tok) -> tuple[int, str]:
    for t in EOS_CANDIDATES:
        i = tok.token_to_id(t)
        if i is not None:
            return i, t
    raise ValueError(f"tokenizer {tok.name} has none of the end-of-text tokens {', '.join(EOS_CANDIDATES)}; "
                     "train one with pretrain.tokenizer.train_bpe_tokenizer (it adds <|endoftext|>)")


@dataclass
class _Chunk:
    doc_id: str
    n: int
    ids: list[int]
    text: str
    query: str | None


def _chunks(docs: Iterable[dict], tok, cfg: PretrainAugmentConfig, sanitize) -> Iterator[_Chunk]:
    for doc in docs:
        text = sanitize(doc.get("text", ""))
        if not text.strip():
            continue
        ids, offsets = tok.encode_offsets(text)
        prev = None
        for n, start in enumerate(range(0, len(ids), cfg.chunk_tokens)):
            piece = ids[start:start + cfg.chunk_tokens]
            span = offsets[start:start + cfg.chunk_tokens]
            ctext = text[span[0][0]:span[-1][1]]
            query = ctext if cfg.query == "chunk" else prev
            yield _Chunk(str(doc["id"]), n, piece, ctext, query)
            prev = ctext


def augment_pretrain(cfg: PretrainAugmentConfig) -> dict:
    """Write the augmented, packed token folder described by ``cfg``; returns a summary dict.

    Example:
        >>> augment_pretrain(PretrainAugmentConfig(index="runs/wiki-index", corpus="wikitext-2",
        ...                                        out="runs/wiki-ralm", k=2))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from pretrain.data import TokenWriter
    from rag.data import load_id_list
    from rag.retriever import Retriever, source_of
    from rag.sanitize import Sanitizer
    from rag.tokenizer import load_tokenizer

    for name in ("index", "corpus", "out"):
        if not getattr(cfg, name):
            raise ConfigError("is required", name)
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    t0 = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer)
    eos, eos_token = _eos_id(tok)
    # Pretraining text has no turns, but a special-token string in a document would tokenise to a
    # real special id (an EOS in the middle of a row): neutralise those in the corpus and the evidence.
    specials = Sanitizer(special_tokens=tok.special_tokens, extra=())
    sanitize = lambda s: _neutralise_specials(s, specials)  # noqa: E731
    retriever = Retriever(cfg.index, retriever=cfg.retriever, cache=True if cfg.cache == "default" else cfg.cache,
                          batch_size=cfg.batch_size, overfetch=3.0)
    listed = load_id_list(cfg.exclude_sources) if cfg.exclude_sources else set()
    neighbour_cache: dict[str, list[int]] = {}

    def evidence_ids(doc: dict) -> list[int]:
        got = neighbour_cache.get(doc["id"])
        if got is None:
            title = sanitize(doc.get("title", ""))
            body = sanitize(doc.get("text", ""))
            ids, offsets = tok.encode_offsets(body)
            if len(ids) > cfg.neighbour_tokens:  # cut at a word boundary
                end = offsets[cfg.neighbour_tokens - 1][1]
                cut = body.rfind(" ", 0, end + 1) if end < len(body) and not body[end].isspace() else end
                body = body[:cut if cut > 0 else end]
            got = tok.encode((title + "\n" if title else "") + body + "\n\n")
            if len(neighbour_cache) < 100_000:
                neighbour_cache[doc["id"]] = got
        return got

    rows_written = 0
    row_fill = 0
    n_chunks = 0
    stats = {"near_duplicates_dropped": 0, "chunks_without_neighbours": 0}
    docs = iter_corpus_any(cfg.corpus)
    if cfg.limit is not None:
        docs = (d for i, d in enumerate(docs) if i < cfg.limit)
    meta = {"tokenizer": str(cfg.tokenizer), "augment": {"index": str(Path(cfg.index).resolve()),
                                                          "fingerprint": retriever.fingerprint, **cfg.to_dict()},
            "eos_token": eos_token}
    writer = TokenWriter(out, vocab_size=tok.vocab_size, eos_id=eos, seq_len=cfg.seq_len, with_loss_mask=True,
                         extra_meta=meta)
    records_tmp = out.parent / f".{out.name}.{CHUNKS_FILE}.tmp"
    try:
        with open(records_tmp, "w", encoding="utf-8") as records:
            bar = tqdm(desc="augment pretrain", unit="chunk", disable=os.environ.get("WANDAO_NO_PROGRESS") == "1")
            batch: list[_Chunk] = []

            def flush(batch: list[_Chunk]) -> None:
                nonlocal rows_written, row_fill, n_chunks
                want = [c for c in batch if c.query and cfg.k > 0]
                neighbours: dict[int, list[tuple[dict, float]]] = {}
                if want:
                    sources = [{c.doc_id} | listed for c in want]
                    drop_source = lambda i, d: source_of(d) in sources[i]  # noqa: E731
                    res = retriever.retrieve([c.query for c in want], k=cfg.k * 3, exclude=drop_source)
                    for row, c in enumerate(want):
                        kept = []
                        for h in res.hits(row):
                            if ngram_containment(c.text, h.document.get("text", ""), cfg.ngram) > cfg.max_ngram_overlap:
                                stats["near_duplicates_dropped"] += 1
                                continue
                            kept.append((h.document, h.score))
                            if len(kept) == cfg.k:
                                break
                        neighbours[id(c)] = kept
                for c in batch:
                    nbrs = neighbours.get(id(c), [])
                    if not nbrs:
                        stats["chunks_without_neighbours"] += 1
                    ev: list[int] = []
                    room = cfg.seq_len - len(c.ids) - 1  # one EOS closes each example
                    used = []
                    for d, s in nbrs:  # whole neighbours only: one that does not fit is left out
                        ids = evidence_ids(d)
                        if len(ev) + len(ids) > room:
                            stats["neighbours_over_seq_len"] = stats.get("neighbours_over_seq_len", 0) + 1
                            continue
                        ev += ids
                        used.append((d, s))
                    nbrs = used
                    example = ev + c.ids + [eos]
                    mask = [0] * len(ev) + [1] * len(c.ids) + [0]
                    if row_fill + len(example) > cfg.seq_len:  # pad the row's tail, start a new row
                        pad = cfg.seq_len - row_fill
                        writer.add([eos] * pad, [0] * pad, documents=0)
                        rows_written += 1
                        row_fill = 0
                    rec = {"chunk": n_chunks, "doc_id": c.doc_id, "n": c.n, "neighbours": [d["id"] for d, _ in nbrs],
                           "scores": [round(s, 4) for _, s in nbrs], "row": rows_written, "offset": row_fill,
                           "evidence_tokens": len(ev), "chunk_tokens": len(c.ids)}
                    records.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    writer.add(example, mask, documents=1)
                    row_fill += len(example)
                    if row_fill == cfg.seq_len:
                        rows_written += 1
                        row_fill = 0
                    n_chunks += 1
                bar.update(len(batch))

            for chunk in _chunks(docs, tok, cfg, sanitize):
                batch.append(chunk)
                if len(batch) == cfg.batch_size:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
            if row_fill:
                pad = cfg.seq_len - row_fill
                writer.add([eos] * pad, [0] * pad, documents=0)
                rows_written += 1
            bar.close()
        if n_chunks == 0:
            raise ValueError(f"{cfg.corpus}: no text to chunk")
        # the token folder is renamed into place by close(); chunks.jsonl joins it atomically after
        writer.extra_meta.update({"chunks": n_chunks, "rows": rows_written, **stats})
        writer.close()  # replaces an existing folder (checked against --force above)
        os.replace(records_tmp, out / CHUNKS_FILE)
    except BaseException:
        writer.abort()
        if records_tmp.exists():
            records_tmp.unlink()
        raise
    seconds = time.perf_counter() - t0
    summary = {"chunks": n_chunks, "rows": rows_written, "seq_len": cfg.seq_len, **stats, "out": str(out),
               "seconds": round(seconds, 2), "chunks_per_s": round(n_chunks / max(seconds, 1e-9), 1)}
    logger.info("augment pretrain: %s", summary)
    return summary


def _neutralise_specials(text: str, sanitizer) -> str:
    """Break special-token strings only (pretraining text keeps its lines and punctuation)."""
    for pattern, _ in sanitizer._literals:
        text = pattern.sub(lambda m: m.group(0).translate(str.maketrans("<>[]", "()()")) if any(
            b in m.group(0) for b in "<>[]") else m.group(0)[:1] + " " + m.group(0)[1:], text)
    return text


def inspect(folder: str | os.PathLike, limit: int | None = None, text: bool = False,
            tokenizer: str | None = None) -> Iterator[dict]:
    """Yield the chunk records of an augmented folder; with ``text``, the decoded evidence and chunk.

    Raises:
        FileNotFoundError: ``folder`` was not written by ``augment pretrain``.
    """
    folder = Path(folder)
    path = folder / CHUNKS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {CHUNKS_FILE}: it was not written by `wandao augment pretrain`")
    tf = tok = None
    if text:
        from pretrain.data import open_tokens
        from rag.tokenizer import load_tokenizer

        tf = open_tokens(folder)
        tok = load_tokenizer(tokenizer or tf.meta.get("tokenizer") or "minilm")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            rec = json.loads(line)
            if tf is not None:
                start = rec["row"] * tf.seq_len + rec["offset"]
                ev_end = start + rec["evidence_tokens"]
                rec["evidence_text"] = tok.decode(np.asarray(tf.tokens[start:ev_end]).tolist())
                rec["chunk_text"] = tok.decode(np.asarray(tf.tokens[ev_end:ev_end + rec["chunk_tokens"]]).tolist())
            yield rec
