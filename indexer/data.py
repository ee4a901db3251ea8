"""Readers for corpora, queries and qrels, with errors that name the file, line and field.

Layouts read:
- JSONL / JSONL.gz in the BEIR layout (``_id``, ``title``, ``text``) or the pyserini layout
  (``id``, ``contents``);
- BEIR folders (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv``);
- HF ``datasets`` saved with ``save_to_disk``, and parquet files.

Every corpus record comes out as ``{"id", "title", "text"}`` (plus ``metadata`` when present).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

logger = logging.getLogger(__name__)

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TEXT_FIELDS = ("text", "contents", "context", "body")


class DataError(ValueError):
    """Bad input: the message names the file, the line (or row) and the field."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f" (field {field!r})" if field else ""
        super().__init__(f"{where}{what}: {problem}")
        self.path, self.line, self.field = str(path), line, field


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    from indexer.io import atomic_write_text as _write

    _write(path, text)


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad lines raise :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(path, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                      "re-encode the file as UTF-8", line_no) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"malformed JSON: {err.msg} at column {err.colno}", line_no) from None
            if not isinstance(obj, dict):
                raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", line_no)
            yield line_no, obj


def normalize_doc(obj: dict, path: str | os.PathLike, line: int | None,
                  id_field: str | None = None, text_field: str | None = None,
                  title_field: str = "title") -> dict:
    """Map a BEIR- or pyserini-layout record onto ``{"id", "title", "text"}``."""
    id_key = id_field or next((k for k in ID_FIELDS if k in obj), None)
    if id_key is None or id_key not in obj:
        raise DataError(path, f"missing document id; expected one of {', '.join(ID_FIELDS)}", line,
                        field=id_field or "_id")
    doc_id = obj[id_key]
    if not isinstance(doc_id, (str, int)) or str(doc_id) == "":
        raise DataError(path, f"document id must be a non-empty string, got {doc_id!r}", line, field=id_key)
    text_key = text_field or next((k for k in TEXT_FIELDS if k in obj), None)
    if text_key is None or text_key not in obj:
        raise DataError(path, f"missing document text; expected one of {', '.join(TEXT_FIELDS)}", line,
                        field=text_field or "text")
    text = obj[text_key]
    title = obj.get(title_field) or ""
    if not isinstance(text, str):
        raise DataError(path, f"text must be a string, got {type(text).__name__}", line, field=text_key)
    if not isinstance(title, str):
        raise DataError(path, f"title must be a string, got {type(title).__name__}", line, field=title_field)
    doc = {"id": str(doc_id), "title": title, "text": text}
    if isinstance(obj.get("metadata"), dict) and obj["metadata"]:
        doc["metadata"] = obj["metadata"]
    return doc


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz", f"{stem}.json", f"{stem}.parquet"):
        if (folder / name).exists():
            return folder / name
    return None


def _is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists())


def _iter_hf_rows(path: Path, split: str | None = None) -> Iterator[tuple[int, dict]]:
    if path.is_dir() and _is_hf_dataset_dir(path):
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            name = split or ("corpus" if "corpus" in ds else "train" if "train" in ds else next(iter(ds)))
            if name not in ds:
                raise DataError(path, f"split {name!r} not found; available: {', '.join(ds)}")
            ds = ds[name]
        for i, row in enumerate(ds, start=1):
            yield i, row
        return
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    row_no = 0
    for file in files:
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row


def iter_records(path: str | os.PathLike, split: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_or_row, record)`` from a JSONL(.gz) file, a parquet file, or an HF dataset folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file or folder not found")
    if path.suffix == ".parquet" or (path.is_dir() and (_is_hf_dataset_dir(path) or any(path.glob("*.parquet")))):
        yield from _iter_hf_rows(path, split)
    elif path.is_dir():
        raise DataError(path, "folder is neither a BEIR folder (corpus.jsonl) nor an HF dataset (save_to_disk)")
    else:
        yield from iter_jsonl(path)


def corpus_path(source: str | os.PathLike) -> Path:
    """Resolve a dataset name, BEIR folder or file to the corpus file (or HF dataset folder)."""
    from indexer.datasets import resolve

    path = resolve(source)
    if path.is_dir() and not _is_hf_dataset_dir(path) and not any(path.glob("*.parquet")):
        found = _find_file(path, "corpus")
        if found is None:
            raise DataError(path, "no corpus.jsonl, corpus.jsonl.gz or corpus.parquet in this folder")
        return found
    return path


#: Plain-text files read as corpora, and the dataset names that stand for one of their files.
TEXT_SUFFIXES = (".txt", ".raw", ".tokens")
TEXT_CORPORA = {"wikitext-2": "raw/wiki.valid.raw", "tinyshakespeare": "input.txt"}


def text_corpus_path(source: str | os.PathLike) -> Path | None:
    """The text file ``source`` names (a ``.txt``/``.raw``/``.tokens`` path, or ``wikitext-2`` =
    its validation split, ``tinyshakespeare``), or None when it is another kind of corpus."""
    p = Path(source)
    if not p.exists() and str(source) in TEXT_CORPORA:
        from indexer.datasets import resolve

        p = resolve(str(source)) / TEXT_CORPORA[str(source)]
    return p if p.is_file() and p.suffix in TEXT_SUFFIXES else None


def iter_text_documents(path: str | os.PathLike) -> Iterator[dict]:
    """Documents from a plain text file.

    WikiText (lines `` = Title = ``) splits at its top-level headings, one document per article;
    any other text splits at blank lines into paragraphs grouped to at least 2,000 characters
    (tinyshakespeare: runs of speeches). Ids are ``<file name>:<n>``.
    """
    import re

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text (byte {err.start})") from None
    stem = path.name
    heading = re.compile(r"^ = ([^=].*?) = $", re.MULTILINE)
    marks = list(heading.finditer(text))
    if marks:
        for n, (m, nxt) in enumerate(zip(marks, marks[1:] + [None])):
            body = text[m.end():nxt.start() if nxt else len(text)].strip()
            if body:
                yield {"id": f"{stem}:{n}", "title": m.group(1).strip(), "text": body}
        return
    buf, n = [], 0
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            buf.append(para.strip())
        if sum(len(p) for p in buf) >= 2000:
            yield {"id": f"{stem}:{n}", "title": "", "text": "\n\n".join(buf)}
            buf, n = [], n + 1
    if buf:
        yield {"id": f"{stem}:{n}", "title": "", "text": "\n\n".join(buf)}


def iter_corpus(source: str | os.PathLike, dedupe: bool = False, id_field: str | None = None,
                text_field: str | None = None) -> Iterator[dict]:
    """Stream ``{"id", "title", "text"}`` documents from any supported corpus source.

    Args:
        source: a registered dataset name (``scifact``), a BEIR folder, a JSONL(.gz)/parquet
            file, an HF dataset folder, or a plain text file (:func:`iter_text_documents`;
            ``wikitext-2`` and ``tinyshakespeare`` name theirs).
        dedupe: keep the first of repeated ids instead of failing.

    Raises:
        DataError: malformed lines, missing fields, duplicate ids (without ``dedupe``),
            non-UTF-8 bytes or an empty corpus, naming the file and line.

    Example:
        >>> docs = list(iter_corpus("scifact"))  # doctest: +SKIP
        >>> docs[0].keys()  # doctest: +SKIP
        dict_keys(['id', 'title', 'text'])
    """
    text_file = text_corpus_path(source)
    if text_file is not None:
        yield from iter_text_documents(text_file)
        return
    path = corpus_path(source)
    seen: set[str] = set()
    dropped = 0
    for line, obj in iter_records(path):
        doc = normalize_doc(obj, path, line, id_field=id_field, text_field=text_field)
        if doc["id"] in seen:
            if not dedupe:
                raise DataError(path, f"duplicate document id {doc['id']!r}; pass --dedupe to keep the first",
                                line, field="_id" if "_id" in obj else "id")
            dropped += 1
            continue
        seen.add(doc["id"])
        yield doc
    if not seen:
        raise DataError(path, "the corpus is empty: no documents found")
    if dropped:
        logger.warning("%s: dropped %d documents with repeated ids (--dedupe)", path, dropped)


def read_corpus(source: str | os.PathLike, dedupe: bool = False, **kwargs: Any) -> list[dict]:
    """:func:`iter_corpus` as a list."""
    return list(iter_corpus(source, dedupe=dedupe, **kwargs))


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read queries: BEIR ``queries.jsonl`` (``_id``, ``text``) or a TSV ``qid<TAB>text`` topic file."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "queries file not found")
    queries: dict[str, str] = {}
    if path.name.endswith((".tsv", ".tsv.gz", ".txt")):
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, start=1):
                line = raw.decode("utf-8").rstrip("\n")
                if not line.strip():
                    continue
                parts = line.split("\t", 1)
                if len(parts) != 2:
                    raise DataError(path, "expected 'qid<TAB>query text'", line_no)
                queries[parts[0]] = parts[1]
        return queries
    for line, obj in iter_jsonl(path):
        qid = next((obj[k] for k in ("_id", "id", "qid", "query_id") if k in obj), None)
        if qid is None:
            raise DataError(path, "missing query id", line, field="_id")
        text = obj.get("text", obj.get("query", obj.get("question")))
        if not isinstance(text, str):
            raise DataError(path, "missing query text", line, field="text")
        queries[str(qid)] = text
    return queries


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read BEIR qrels TSV (``query-id corpus-id score`` with a header) or TREC qrels (``qid 0 docid rel``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "qrels file not found; BEIR folders keep them in qrels/<split>.tsv")
    qrels: dict[str, dict[str, int]] = {}
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            parts = line.split()
            if line_no == 1 and parts[0].lower() in ("query-id", "qid", "query_id"):
                continue
            if len(parts) == 3:
                qid, docid, rel = parts
            elif len(parts) == 4:
                qid, _, docid, rel = parts
            else:
                raise DataError(path, f"expected 3 (BEIR) or 4 (TREC) columns, got {len(parts)}", line_no)
            try:
                qrels.setdefault(qid, {})[docid] = int(float(rel))
            except ValueError:
                raise DataError(path, f"relevance {rel!r} is not a number", line_no, field="score") from None
    if not qrels:
        raise DataError(path, "qrels file has no judgements")
    return qrels


def beir_paths(source: str | os.PathLike, split: str = "test") -> tuple[Path, Path, Path]:
    """(corpus, queries, qrels) paths of a BEIR-layout dataset name or folder."""
    from indexer.datasets import resolve

    folder = resolve(source)
    if not folder.is_dir():
        raise DataError(folder, "expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    corpus = _find_file(folder, "corpus")
    queries = _find_file(folder, "queries")
    qrels = folder / "qrels" / f"{split}.tsv"
    if corpus is None:
        raise DataError(folder, "no corpus.jsonl(.gz) in this BEIR folder")
    if queries is None:
        raise DataError(folder, "no queries.jsonl(.gz) in this BEIR folder")
    if not qrels.exists():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").exists() else []
        raise DataError(qrels, f"qrels file for split {split!r} not found; available splits: "
                               f"{', '.join(available) or 'none'}")
    return corpus, queries, qrels


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSONL atomically (``.gz`` suffix compresses). Returns the row count."""
    from indexer.io import make_temp_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(path)
    n = 0
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n
