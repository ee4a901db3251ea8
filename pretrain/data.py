"""Pretraining data: tokenise, pack, memory-map, mix sources, and sample batches resumably.

On-disk token format (the contract with ``rag``'s pretraining augmenter)
-----------------------------------------------------------------------
A *token folder* holds:

``tokens.bin``
    the token ids, a flat little-endian ``uint16`` array (``uint32`` when the vocabulary has more
    than 65,535 ids), read with ``np.memmap`` so a corpus larger than RAM streams.
``loss_mask.bin`` (optional)
    ``uint8``, the same length as ``tokens.bin``. ``loss_mask[i] == 1`` means *predicting token
    ``i``* counts in the loss; ``0`` excludes it. The augmenter writes 0 over the retrieved-evidence
    prefix and 1 over the original text, so the model reads evidence without being trained to
    produce it. (The first token of a row is never a target, so its mask value is unused.)
``meta.json``
    ``{"format": "wandao-tokens", "version": 1, "dtype": "uint16"|"uint32", "num_tokens": int,
    "vocab_size": int, "eos_id": int|null, "seq_len": int|null, "has_loss_mask": bool,
    "num_documents": int, "tokenizer": str|null, ...}``. ``seq_len`` set means the file is
    *packed*: ``num_tokens`` is a multiple of ``seq_len`` and row ``r`` is
    ``tokens[r*seq_len:(r+1)*seq_len]``; training takes ``x = row[:-1]``, ``y = row[1:]`` and
    ``mask = loss_mask_row[1:]``, so ``seq_len`` must be the model's ``block_size + 1``.
    ``seq_len: null`` means a plain stream of documents separated by EOS, sampled at random offsets.

A folder may instead hold ``train/`` and ``val/`` token folders. Everything is written to a
temporary folder and renamed (:class:`TokenWriter`), so a crash never leaves half a file.

Sources and mixtures
--------------------
A source is a text file (one document), a JSONL file (one document per line, field ``text``), or a
token folder. Text is split before tokenising: the first ``1 - val_fraction`` of the characters
(or documents) train, the rest validate, as nanoGPT's ``prepare.py``. A mixture draws each
batch row from source ``i`` with probability ``w_i / sum(w)`` (GPT-3, Brown et al. 2020, Table 2.2),
and :func:`mixture_report` gives the effective epochs per source, ``w_i * tokens_seen / tokens_i``.

Batches
-------
:class:`BatchSampler` draws nanoGPT-style random windows (``torch.randint`` offsets) from a seeded
``torch.Generator`` of its own, so its state (saved in checkpoints) makes resume exact.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "wandao-tokens"
VERSION = 1


class DataFormatError(ValueError):
    """Bad pretraining data: the message names the file, line (or field) and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f" (field {field!r})" if field else ""
        super().__init__(f"{where}{what}: {problem}")


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab ≤ 65,535 ids, as nanoGPT), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


# ------------------------------------------------------------------------------- writing / reading


class TokenWriter:
    """Stream token ids (and optionally a loss mask) into a token folder, atomically.

    Example:
        >>> with TokenWriter("/tmp/tok-example", vocab_size=65, eos_id=None) as w:  # doctest: +SKIP
        ...     w.add([1, 2, 3])
    """

    def __init__(self, folder: str | os.PathLike, vocab_size: int, eos_id: int | None,
                 seq_len: int | None = None, with_loss_mask: bool = False, extra_meta: dict | None = None):
        self.folder = Path(folder)
        self.vocab_size, self.eos_id, self.seq_len = vocab_size, eos_id, seq_len
        self.dtype = token_dtype(vocab_size)
        self.with_loss_mask = with_loss_mask
        self.extra_meta = dict(extra_meta or {})
        self.num_tokens = 0
        self.num_documents = 0
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.building-", dir=self.folder.parent))
        self._tokens = open(self._tmp / "tokens.bin", "wb")
        self._mask = open(self._tmp / "loss_mask.bin", "wb") if with_loss_mask else None

    def add(self, ids: Sequence[int] | np.ndarray, loss_mask: Sequence[int] | np.ndarray | None = None,
            documents: int = 1) -> None:
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"{self.folder}: token id {int(arr.max() if arr.max() >= self.vocab_size else arr.min())} "
                             f"is outside the vocabulary [0, {self.vocab_size})")
        self._tokens.write(arr.astype(self.dtype, copy=False).tobytes())
        if self._mask is not None:
            if loss_mask is None:
                mask = np.ones(arr.size, dtype=np.uint8)
            else:
                mask = np.asarray(loss_mask, dtype=np.uint8)
                if mask.shape != arr.shape:
                    raise ValueError(f"{self.folder}: loss mask has {mask.size} entries for {arr.size} tokens")
            self._mask.write(mask.tobytes())
        elif loss_mask is not None:
            raise ValueError(f"{self.folder}: a loss mask was given but the writer was opened without with_loss_mask")
        self.num_tokens += int(arr.size)
        self.num_documents += documents

    def close(self) -> Path:
        self._tokens.close()
        if self._mask is not None:
            self._mask.close()
        if self.seq_len is not None and self.num_tokens % self.seq_len:
            self.abort()
            raise ValueError(f"{self.folder}: packed file has {self.num_tokens} tokens, not a multiple of "
                             f"seq_len={self.seq_len}")
        meta = {"format": FORMAT, "version": VERSION, "dtype": self.dtype.name, "num_tokens": self.num_tokens,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id, "seq_len": self.seq_len,
                "has_loss_mask": self.with_loss_mask, "num_documents": self.num_documents, **self.extra_meta}
        (self._tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if self.folder.exists():
            shutil.rmtree(self.folder)
        os.replace(self._tmp, self.folder)
        return self.folder

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tokens.close()
            if self._mask is not None:
                self._mask.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class TokenFile:
    """A memory-mapped token folder: ``tokens`` (and ``loss_mask``) are ``np.memmap`` arrays."""

    folder: Path
    meta: dict
    tokens: np.ndarray
    loss_mask: np.ndarray | None

    @property
    def seq_len(self) -> int | None:
        return self.meta.get("seq_len")

    @property
    def num_rows(self) -> int:
        return len(self.tokens) // self.seq_len if self.seq_len else 0


def is_token_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").exists() and (Path(path) / "tokens.bin").exists()


def open_tokens(folder: str | os.PathLike) -> TokenFile:
    """Open a token folder read-only, checking ``meta.json`` against the files; errors name the field."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise DataFormatError(folder, "not a token folder: meta.json is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(meta_path, f"malformed JSON: {err.msg}", err.lineno) from None
    for key in ("dtype", "num_tokens", "vocab_size"):
        if key not in meta:
            raise DataFormatError(meta_path, "missing required field", field=key)
    if meta.get("format", FORMAT) != FORMAT:
        raise DataFormatError(meta_path, f"format is {meta['format']!r}, expected {FORMAT!r}", field="format")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise DataFormatError(meta_path, f"dtype {meta['dtype']!r} is not uint16 or uint32", field="dtype")
    dtype = np.dtype(meta["dtype"])
    tok_path = folder / "tokens.bin"
    size = tok_path.stat().st_size if tok_path.exists() else -1
    if size != meta["num_tokens"] * dtype.itemsize:
        raise DataFormatError(tok_path, f"{size} bytes, but meta.json says {meta['num_tokens']} tokens of "
                                        f"{meta['dtype']} ({meta['num_tokens'] * dtype.itemsize} bytes)", field="num_tokens")
    tokens = np.memmap(tok_path, dtype=dtype, mode="r") if meta["num_tokens"] else np.zeros(0, dtype=dtype)
    mask = None
    if meta.get("has_loss_mask"):
        mask_path = folder / "loss_mask.bin"
        msize = mask_path.stat().st_size if mask_path.exists() else -1
        if msize != meta["num_tokens"]:
            raise DataFormatError(mask_path, f"{msize} bytes, expected one uint8 per token ({meta['num_tokens']})",
                                  field="has_loss_mask")
        mask = np.memmap(mask_path, dtype=np.uint8, mode="r") if meta["num_tokens"] else np.zeros(0, np.uint8)
    seq_len = meta.get("seq_len")
    if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 2 or meta["num_tokens"] % seq_len):
        raise DataFormatError(meta_path, f"seq_len={seq_len!r} must be an integer >= 2 dividing num_tokens="
                                         f"{meta['num_tokens']}", field="seq_len")
    return TokenFile(folder, meta, tokens, mask)


# ------------------------------------------------------------------------------------ tokenising


def _char_lookup(tokenizer) -> np.ndarray | None:
    """A code-point → id table when ``tokenizer`` is character-level (every vocab entry one char)."""
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []))
    chars = {t: i for t, i in vocab.items() if t not in special}
    if not chars or any(len(t) != 1 for t in chars):
        return None
    # A byte-level BPE also has one-character entries, but merges too; char vocabularies are small.
    if len(chars) > 4096:
        return None
    table = np.full(max(map(ord, chars)) + 1, -1, dtype=np.int64)
    for t, i in chars.items():
        table[ord(t)] = i
    return table


def encode_text(tokenizer, text: str, source: str | os.PathLike = "<text>") -> np.ndarray:
    """Token ids of ``text`` (no special tokens); the char-level path is vectorised with numpy."""
    table = getattr(tokenizer, "_wandao_char_table", None)
    if table is None:
        table = _char_lookup(tokenizer)
        with contextlib.suppress(Exception):
            tokenizer._wandao_char_table = table if table is not None else False
    if table is not None and table is not False:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ok = codes < len(table)
        ids = np.where(ok, table[np.minimum(codes, len(table) - 1)], -1)
        if (ids < 0).any():
            bad = sorted({text[i] for i in np.flatnonzero(ids < 0)[:20]})
            raise DataFormatError(source, f"characters not in the tokenizer's vocabulary: {bad!r}")
        return ids
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def iter_documents(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """Documents of a source file: a JSONL(.gz) file gives one per line, any other file is one document."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "file not found")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFormatError(path, f"malformed JSON: {err.msg}", line_no) from None
                value = obj.get(text_field) if isinstance(obj, dict) else None
                if not isinstance(value, str):
                    raise DataFormatError(path, "missing or non-string text", line_no, field=text_field)
                title = obj.get("title")
                yield f"{title}\n{value}" if isinstance(title, str) and title else value
    else:
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataFormatError(path, f"not valid UTF-8 at byte {err.start}; re-encode the file as UTF-8") from None


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """One document: split its characters (nanoGPT's first 90% / last 10%). Several: split the list."""
    if val_fraction <= 0:
        return docs, []
    if len(docs) == 1:
        n = len(docs[0])
        cut = int(n * (1 - val_fraction))
        return [docs[0][:cut]], [docs[0][cut:]]
    cut = int(len(docs) * (1 - val_fraction))
    return docs[:cut], docs[cut:]


def write_documents(docs: Iterable[str], tokenizer, folder: str | os.PathLike, eos_id: int | None,
                    seq_len: int | None = None, source: str = "<documents>", extra_meta: dict | None = None) -> Path:
    """Tokenise ``docs``, separate them with EOS, and write a token folder.

    With ``seq_len`` the stream is packed into rows of ``seq_len`` tokens; the tail that does not fill a
    row is dropped (and counted in ``meta.json`` as ``dropped_tokens``).
    """
    vocab_size = len(tokenizer)
    writer = TokenWriter(folder, vocab_size, eos_id, seq_len=seq_len, extra_meta=extra_meta)
    carry = np.zeros(0, dtype=np.int64)
    try:
        for doc in docs:
            ids = encode_text(tokenizer, doc, source)
            if eos_id is not None:
                ids = np.concatenate([ids, [eos_id]])
            if seq_len is None:
                writer.add(ids)
                continue
            carry = np.concatenate([carry, ids])
            n_full = len(carry) // seq_len * seq_len
            if n_full:
                writer.add(carry[:n_full], documents=1)
                carry = carry[n_full:]
            else:
                writer.num_documents += 1
        writer.extra_meta["dropped_tokens"] = int(len(carry))
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def fingerprint(*parts: Any) -> str:
    """A short hash of files (path, size, mtime) and values, used to reuse prepared token folders."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.exists():
            st = part.stat()
            h.update(f"{part.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass
class PreparedSource:
    name: str
    weight: float
    train: TokenFile
    val: TokenFile | None

    @property
    def train_tokens(self) -> int:
        return int(self.train.meta["num_tokens"])


def prepare_source(path: str | os.PathLike, tokenizer, cache_dir: str | os.PathLike, val_fraction: float,
                   name: str | None = None, weight: float = 1.0, text_field: str = "text",
                   tokenizer_id: str = "") -> PreparedSource:
    """Turn one source into train/val token folders (reused from ``cache_dir`` when unchanged)."""
    path = Path(os.path.expandvars(os.path.expanduser(str(path))))
    name = name or path.stem.replace(".jsonl", "")
    if path.is_dir():
        if is_token_folder(path / "train"):
            val = open_tokens(path / "val") if is_token_folder(path / "val") else None
            return PreparedSource(name, weight, open_tokens(path / "train"), val)
        if not is_token_folder(path):
            raise DataFormatError(path, "folder is not a token folder (meta.json + tokens.bin) and has no train/")
        full = open_tokens(path)
        return PreparedSource(name, weight, *_split_token_file(full, val_fraction, Path(cache_dir) / name))
    if not path.exists():
        raise DataFormatError(path, "data source not found (check data.sources[].path and $WANDAO_DATA_DIR)")
    key = fingerprint(path, val_fraction, text_field, tokenizer_id, len(tokenizer))
    out = Path(cache_dir) / f"{name}-{key}"
    if not (is_token_folder(out / "train")):
        eos_id = tokenizer.eos_token_id
        meta = {"source": str(path), "tokenizer": tokenizer_id}
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            # Stream twice (count, then write) so a corpus larger than RAM never sits in memory.
            n_docs = sum(1 for _ in iter_documents(path, text_field))
            cut = int(n_docs * (1 - val_fraction)) if val_fraction > 0 else n_docs
            train_docs = itertools.islice(iter_documents(path, text_field), cut)
            val_docs = itertools.islice(iter_documents(path, text_field), cut, None) if cut < n_docs else None
        else:
            train_docs, val_docs = split_documents(list(iter_documents(path, text_field)), val_fraction)
        write_documents(train_docs, tokenizer, out / "train", eos_id, source=str(path), extra_meta=meta)
        if val_docs:
            write_documents(val_docs, tokenizer, out / "val", eos_id, source=str(path), extra_meta=meta)
        logger.info("tokenised %s into %s", path, out)
    val = open_tokens(out / "val") if is_token_folder(out / "val") else None
    return PreparedSource(name, weight, open_tokens(out / "train"), val)


def _split_token_file(full: TokenFile, val_fraction: float, out: Path) -> tuple[TokenFile, TokenFile | None]:
    """Split a single token folder: whole rows for packed data, a token cut for streams (views, no copy)."""
    n = len(full.tokens)
    if val_fraction <= 0:
        return full, None
    if full.seq_len:
        rows = full.num_rows
        cut = max(1, int(rows * (1 - val_fraction))) * full.seq_len
    else:
        cut = int(n * (1 - val_fraction))

    def view(lo: int, hi: int) -> TokenFile:
        meta = dict(full.meta, num_tokens=hi - lo)
        mask = full.loss_mask[lo:hi] if full.loss_mask is not None else None
        return TokenFile(full.folder, meta, full.tokens[lo:hi], mask)

    return view(0, cut), (view(cut, n) if cut < n else None)


def mixture_report(sources: Sequence[PreparedSource], tokens_per_step: int, steps: int) -> list[dict]:
    """Per source: normalised weight, train tokens, tokens the run will draw, and effective epochs.

    Effective epochs (GPT-3 Table 2.2's "epochs elapsed when training for 300B tokens") are
    ``weight_i * tokens_per_step * steps / train_tokens_i``.
    """
    total_w = sum(s.weight for s in sources)
    rows = []
    for s in sources:
        w = s.weight / total_w
        seen = w * tokens_per_step * steps
        rows.append({"source": s.name, "weight": round(w, 6), "train_tokens": s.train_tokens,
                     "tokens_seen": int(seen), "epochs": seen / max(1, s.train_tokens)})
    return rows


# -------------------------------------------------------------------------------------- sampling


class BatchSampler:
    """Random-window batches from one or more token sources, resumable through :meth:`state_dict`.

    Each row of a batch picks a source with probability proportional to its weight (skipped for one
    source), then a window: a random offset into a stream (nanoGPT's ``get_batch``) or a random
    packed row. Returns ``(x, y, mask)`` with ``x``, ``y`` int64 of shape ``(B, T)`` and ``mask`` a
    float tensor ``(B, T)`` when any source has a loss mask, else ``None``.
    """

    def __init__(self, files: Sequence[TokenFile], weights: Sequence[float] | None, batch_size: int,
                 block_size: int, seed: int, device: str = "cpu"):
        import torch

        if not files:
            raise ValueError("BatchSampler needs at least one token source")
        self.files = list(files)
        self.batch_size, self.block_size, self.device = batch_size, block_size, device
        for f in self.files:
            if f.seq_len is not None and f.seq_len != block_size + 1:
                raise DataFormatError(f.folder, f"packed rows of seq_len={f.seq_len} do not fit block_size="
                                                f"{block_size}: rows must be block_size + 1 tokens", field="seq_len")
            if f.seq_len is None and len(f.tokens) <= block_size + 1:
                raise DataFormatError(f.folder, f"only {len(f.tokens)} tokens, fewer than block_size + 2 = "
                                                f"{block_size + 2}", field="num_tokens")
        w = np.asarray(weights if weights is not None else [1.0] * len(files), dtype=np.float64)
        self.weights = torch.tensor(w / w.sum(), dtype=torch.float64)
        self.has_mask = any(f.loss_mask is not None for f in self.files)
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.batches = 0
        self._arange = np.arange(block_size + 1)
        # Small streams (the char benchmark's 1M tokens) are held as one int64 tensor: a torch gather
        # is cheaper per step than numpy fancy indexing + conversion. Large ones stay memory-mapped.
        self._resident = [torch.from_numpy(np.asarray(f.tokens, dtype=np.int64))
                          if f.seq_len is None and f.loss_mask is None and len(f.tokens) <= 50_000_000 else None
                          for f in self.files]

    def _windows(self, k: int, n: int):
        import torch

        f = self.files[k]
        T1 = self.block_size + 1
        if f.seq_len is None:
            offsets = torch.randint(len(f.tokens) - T1 + 1, (n,), generator=self.generator)
        else:
            offsets = torch.randint(f.num_rows, (n,), generator=self.generator) * f.seq_len
        if self._resident[k] is not None:
            idx = offsets[:, None] + torch.arange(T1)  # (n, T+1)
            return self._resident[k][idx], None
        idx = offsets.numpy()[:, None] + self._arange  # (n, T+1), reads only these pages of the memmap
        toks = torch.from_numpy(np.asarray(f.tokens[idx], dtype=np.int64))
        mask = torch.from_numpy(np.asarray(f.loss_mask[idx], dtype=np.float32)) if f.loss_mask is not None else None
        return toks, mask

    def next_windows(self):
        """The next ``B`` raw windows: ``(tokens, mask)``, int64 ``(B, T+1)`` and float ``(B, T+1)`` or None
        (:meth:`next_batch` splits them into inputs and targets; span corruption reads them whole)."""
        import torch

        B, T = self.batch_size, self.block_size
        self.batches += 1
        if len(self.files) == 1:
            toks, mask = self._windows(0, B)
        else:
            choice = torch.multinomial(self.weights, B, replacement=True, generator=self.generator)
            toks = torch.empty(B, T + 1, dtype=torch.int64)
            mask = torch.ones(B, T + 1, dtype=torch.float32) if self.has_mask else None
            for k in range(len(self.files)):
                rows = (choice == k).nonzero().flatten()
                if len(rows) == 0:
                    continue
                t, m = self._windows(k, len(rows))
                toks[rows] = t
                if m is not None:
                    mask[rows] = m
        return toks, mask

    def next_batch(self):
        import torch

        B, T = self.batch_size, self.block_size
        toks, mask = self.next_windows()
        x, y = toks[:, :-1], toks[:, 1:]
        m = mask[:, 1:] if mask is not None else (torch.ones(B, T) if self.has_mask else None)
        if self.device != "cpu":
            x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
            m = m.to(self.device, non_blocking=True) if m is not None else None
        return x, y, m

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])
