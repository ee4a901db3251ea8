"""Dense retrieval: sentence-transformers embeddings in a faiss index (inner product of unit vectors).

A dense index folder holds::

    dense/
      dense.json        encoder (model, fingerprint, backend, dim), faiss factory, dtype, counts, versions
      ids.npy           document ids, unicode array (row i of the index is ids[i])
      embeddings.npy    the vectors (float32, or float16 with ``fp16=True``), memory-mapped on load
      faiss.index       the faiss index (written with ``faiss.write_index``)

Encoding is sharded and resumable: :func:`encode_sharded` writes one ``.npy`` per shard (atomically,
with a small JSON sidecar naming the model fingerprint and a hash of the shard's documents), so a
killed build re-encodes only the shards that were not finished.

faiss is imported when used. When ``faiss-gpu`` is installed and a GPU is visible, searches run on
the GPU (the saved index is always the CPU one); this is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from indexer.encode import Encoder, cache_dir, doc_text
from indexer.results import Results

logger = logging.getLogger(__name__)

CONFIG = "dense.json"
FORMAT_VERSION = 1


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_write_json(path: Path, obj: dict) -> None:
    from indexer.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _shard_hash(docs: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d["id"].encode())
        h.update(b"\0")
        h.update(doc_text(d).encode())
        h.update(b"\1")
    return h.hexdigest()


def encode_sharded(encoder: Encoder, docs: Sequence[dict], work_dir: str | os.PathLike, shard_size: int = 4096,
                   show_progress: bool = True, on_shard: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Encode documents shard by shard into ``work_dir``, skipping shards already done.

    Each shard ``i`` is written as ``emb-{i:05d}.npy`` (atomically) and then ``emb-{i:05d}.json``
    (model fingerprint, backend, count, dim, sha256 of the shard's ids and texts). On a rerun a
    shard is skipped only when its sidecar matches the current encoder and documents and the array
    has the right shape; anything else is re-encoded.

    Args:
        encoder: the :class:`~indexer.encode.Encoder`.
        docs: ``{"id","title","text"}`` dicts.
        work_dir: where the shards live (keep it stable across restarts).
        shard_size: documents per shard.
        show_progress: a tqdm bar over shards (documents).
        on_shard: called as ``on_shard(shard_index, n_shards)`` after each shard is written
            (a hook for progress reporting and for the resume tests).

    Returns:
        ``(len(docs), dim)`` float32 embeddings in document order.

    Example:
        >>> emb = encode_sharded(Encoder(), docs, "runs/scifact.shards")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    n_shards = (len(docs) + shard_size - 1) // shard_size
    fingerprint, dim = encoder.fingerprint, encoder.dim
    parts: list[np.ndarray] = []
    encoded = skipped = 0
    bar = tqdm(total=len(docs), desc="encode", unit="doc", disable=not show_progress)
    for i in range(n_shards):
        shard = docs[i * shard_size:(i + 1) * shard_size]
        npy, meta_path = work / f"emb-{i:05d}.npy", work / f"emb-{i:05d}.json"
        expected = {"fingerprint": fingerprint, "backend": encoder.backend, "count": len(shard), "dim": dim,
                    "docs_sha256": _shard_hash(shard)}
        emb = None
        if npy.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                arr = np.load(npy, mmap_mode="r", allow_pickle=False)
                if meta == expected and arr.shape == (len(shard), dim):
                    emb = np.asarray(arr, dtype=np.float32)
                    skipped += 1
            except (ValueError, OSError, json.JSONDecodeError) as err:
                logger.warning("%s: unreadable shard (%s); encoding it again", npy, err)
        if emb is None:
            emb = encoder.encode_documents(shard)
            _atomic_save_npy(npy, emb)
            _atomic_write_json(meta_path, expected)
            encoded += 1
        parts.append(emb)
        bar.update(len(shard))
        if on_shard is not None:
            on_shard(i, n_shards)
    bar.close()
    if skipped:
        logger.info("resumed: %d of %d shards were already encoded in %s", skipped, n_shards, work)
    logger.info("encoded %d shards (%d skipped)", encoded, skipped)
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("dense indexes need faiss: pip install faiss-cpu (or faiss-gpu-cu12 for the gpu extra)") \
            from None
    return faiss


def storage_factory(factory: str, fp16: bool) -> str:
    """The faiss factory string actually built: with ``fp16`` a flat (uncompressed) storage becomes
    ``SQfp16`` (``Flat`` -> ``SQfp16``, ``HNSW32`` -> ``HNSW32,SQfp16``, ``IVF256,Flat`` -> ``IVF256,SQfp16``);
    compressed storages (PQ, SQ8, ...) are kept.

    Example:
        >>> storage_factory("HNSW32", fp16=True), storage_factory("IVF64,PQ16", fp16=True)
        ('HNSW32,SQfp16', 'IVF64,PQ16')
    """
    factory = factory.strip()
    if not fp16:
        return factory
    parts = [p.strip() for p in factory.split(",")]
    if parts[-1] == "Flat":
        parts[-1] = "SQfp16"
        return ",".join(parts)
    if len(parts) == 1 and parts[0].startswith("HNSW") and parts[0][4:].isdigit():
        return f"{parts[0]},SQfp16"
    return factory


class DenseIndex:
    """A faiss index over sentence-transformers embeddings, searched by cosine similarity.

    Build with :meth:`build`, open with :meth:`load`, search with :meth:`retrieve`.

    Example:
        >>> index = DenseIndex.build(docs, "runs/dense", factory="HNSW32")  # doctest: +SKIP
        >>> index.retrieve(["coffee and heart disease"], k=5).ids  # doctest: +SKIP
    """

    def __init__(self, path: Path, config: dict, ids: np.ndarray, embeddings: np.ndarray, index, encoder: Encoder):
        self.path = Path(path)
        self.config = config
        self.ids = ids
        self.embeddings = embeddings
        self.index = index
        self.encoder = encoder
        self._search_index = None

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Sequence[dict], out_dir: str | os.PathLike, model: str | None = None,
              factory: str = "Flat", fp16: bool = False, encoder_backend: str = "auto",
              encoder: Encoder | None = None, shard_size: int = 4096, work_dir: str | os.PathLike | None = None,
              keep_shards: bool = False, nprobe: int = 16, ef_search: int = 128, train_size: int = 100_000,
              show_progress: bool = True, on_shard: Callable[[int, int], None] | None = None) -> "DenseIndex":
        """Encode ``docs`` (resumably) and write a dense index into ``out_dir``.

        Args:
            docs: ``{"id","title","text"}`` dicts (ids must be unique).
            out_dir: the folder to write (created; files inside are written atomically).
            model: sentence-transformers path or hub id; ``None`` = bundled all-MiniLM-L6-v2.
            factory: faiss factory string (``Flat``, ``HNSW32``, ``IVF256,PQ32``, ...), inner-product metric.
            fp16: store vectors as float16 (``embeddings.npy`` and, for flat storages, ``SQfp16``).
            encoder_backend: ``auto``, ``torch``, ``onnx``, ``onnx-int8`` or ``onnx-int8-token`` (see :mod:`indexer.encode`).
            encoder: an already-built encoder (overrides ``model``/``encoder_backend``).
            shard_size, work_dir, keep_shards: sharded encoding; the default ``work_dir`` is a cache
                folder keyed by encoder and corpus, so rerunning a killed build resumes it.
            nprobe, ef_search: search-time settings saved with the index (IVF probes, HNSW efSearch).
            train_size: most vectors used to train IVF/PQ indexes.
            on_shard: see :func:`encode_sharded`.
        """
        docs = list(docs)
        if not docs:
            raise ValueError("cannot build a dense index from an empty corpus")
        ids = [d["id"] for d in docs]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in _count(ids) if c > 1)
            raise ValueError(f"duplicate document id {dup!r}; ids must be unique")
        encoder = encoder or Encoder(model, backend=encoder_backend)
        cls._check_factory(storage_factory(factory, fp16), encoder.dim)  # fail before minutes of encoding
        if work_dir is None:
            h = hashlib.sha256()
            h.update(f"{encoder.fingerprint}|{encoder.backend}|{shard_size}|".encode())
            for d in docs:
                h.update(d["id"].encode() + b"\0")
            work_dir = cache_dir() / "encode" / h.hexdigest()[:20]
        t0 = time.perf_counter()
        emb = encode_sharded(encoder, docs, work_dir, shard_size=shard_size, show_progress=show_progress,
                             on_shard=on_shard)
        seconds = time.perf_counter() - t0
        logger.info("encoded %d docs in %.1f s (%.1f docs/s)", len(docs), seconds, len(docs) / max(seconds, 1e-9))
        index = cls.from_embeddings(ids, emb, out_dir, encoder, factory=factory, fp16=fp16, nprobe=nprobe,
                                    ef_search=ef_search, train_size=train_size,
                                    extra={"encode_seconds": round(seconds, 3)})
        if not keep_shards:
            shutil.rmtree(work_dir, ignore_errors=True)
        return index

    @classmethod
    def from_embeddings(cls, ids: Sequence[str], emb: np.ndarray, out_dir: str | os.PathLike, encoder: Encoder,
                        factory: str = "Flat", fp16: bool = False, nprobe: int = 16, ef_search: int = 128,
                        train_size: int = 100_000, extra: dict | None = None) -> "DenseIndex":
        """Write a dense index from vectors already encoded by ``encoder`` (unit rows, in ``ids`` order)."""
        ids = list(ids)
        if len(ids) != len(emb):
            raise ValueError(f"{len(ids)} ids for {len(emb)} vectors")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        built = storage_factory(factory, fp16)
        index = cls._make_faiss(emb, built, train_size)
        dtype = "float16" if fp16 else "float32"
        config = {
            "format_version": FORMAT_VERSION,
            "encoder": encoder.info(),
            "factory": factory,
            "faiss_factory": built,
            "metric": "inner_product",
            "dtype": dtype,
            "count": len(ids),
            "nprobe": nprobe,
            "ef_search": ef_search,
            "versions": _versions(),
            **(extra or {}),
        }
        id_arr = np.asarray(ids, dtype=f"<U{max(1, max(len(i) for i in ids))}")
        stored = np.ascontiguousarray(emb, dtype=dtype)
        cls._write(out, config, id_arr, stored, index)
        logger.info("dense index: %d docs, faiss %s (%s), dim %d", len(ids), built, dtype, encoder.dim)
        return cls(out, config, id_arr, stored, index, encoder)

    @staticmethod
    def _check_factory(factory: str, dim: int):
        faiss = _faiss()
        try:
            return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            raise ValueError(f"--faiss: invalid faiss factory string {factory!r} for dimension {dim} ({first}); "
                             "examples: Flat, HNSW32, IVF256,Flat, IVF256,PQ32, SQfp16") from None

    @classmethod
    def _make_faiss(cls, emb: np.ndarray, factory: str, train_size: int):
        x = np.ascontiguousarray(emb, dtype=np.float32)
        index = cls._check_factory(factory, x.shape[1])
        if not index.is_trained:
            sample = x
            if len(x) > train_size:
                sample = x[np.random.default_rng(0).choice(len(x), train_size, replace=False)]
            logger.info("training faiss %s on %d vectors", factory, len(sample))
            try:
                index.train(sample)
            except RuntimeError as err:
                raise ValueError(f"cannot train faiss {factory!r} on {len(sample)} vectors: {err}. Use fewer IVF "
                                 "lists (about sqrt(n)) or a Flat/HNSW factory for small corpora") from None
        index.add(x)
        return index

    @staticmethod
    def _write(out: Path, config: dict, ids: np.ndarray, emb: np.ndarray, index) -> None:
        faiss = _faiss()
        _atomic_save_npy(out / "ids.npy", ids)
        _atomic_save_npy(out / "embeddings.npy", emb)
        fd, tmp = tempfile.mkstemp(prefix=".faiss.index.", suffix=".tmp", dir=out)
        os.close(fd)
        try:
            faiss.write_index(index, tmp)
            os.replace(tmp, out / "faiss.index")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _atomic_write_json(out / CONFIG, config)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, encoder: Encoder | None = None,
             encoder_backend: str | None = None) -> "DenseIndex":
        """Open a dense index folder (embeddings memory-mapped).

        Queries are encoded with the model and backend recorded at build time unless ``encoder``
        or ``encoder_backend`` says otherwise.
        """
        path = Path(path)
        cfg_path = path / CONFIG
        if not cfg_path.exists():
            raise FileNotFoundError(f"{path} is not a dense index (no {CONFIG})")
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format version {config['format_version']} is newer than this wandao "
                             f"reads ({FORMAT_VERSION})")
        faiss = _faiss()
        ids = np.load(path / "ids.npy", allow_pickle=False)
        emb = np.load(path / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        index = faiss.read_index(str(path / "faiss.index"))
        if index.ntotal != len(ids):
            raise ValueError(f"{path}: faiss.index has {index.ntotal} vectors but ids.npy has {len(ids)}")
        enc_cfg = config["encoder"]
        if encoder is None:
            model = enc_cfg["model_path"] if Path(enc_cfg["model_path"]).exists() else enc_cfg["model"]
            from indexer.encode import DEFAULT_MODEL

            if enc_cfg["model"] == DEFAULT_MODEL:
                model = None
            encoder = Encoder(model, backend=encoder_backend or enc_cfg["backend"])
        return cls(path, config, ids, emb, index, encoder)

    def info(self) -> dict:
        """What the index manifest records (model, dimension, normalisation, factory, dtype, counts, versions)."""
        enc = self.config["encoder"]
        return {"backend": "dense", "model": enc["model"], "dim": enc["dim"], "normalize": enc["normalize"],
                "encoder_backend": enc["backend"], "fingerprint": enc["fingerprint"],
                "faiss_factory": self.config["faiss_factory"], "factory": self.config["factory"],
                "metric": self.config["metric"], "dtype": self.config["dtype"], "count": int(len(self.ids)),
                "versions": self.config["versions"]}

    # -- adding --------------------------------------------------------------------------------
    def add(self, docs: Iterable[dict], out_dir: str | os.PathLike | None = None,
            show_progress: bool = True) -> "DenseIndex":
        """Encode and append new documents, writing the index to ``out_dir`` (default: in place, atomically
        file by file). IVF/PQ indexes keep their trained quantizers. Returns the updated index.
        """
        docs = list(docs)
        out = Path(out_dir) if out_dir is not None else self.path
        if not docs:
            return self
        known = set(self.ids.tolist())
        for d in docs:
            if d["id"] in known:
                raise ValueError(f"document id {d['id']!r} is already in the dense index {self.path}")
            known.add(d["id"])
        emb = self.encoder.encode_documents(docs, show_progress=show_progress)
        self.index.add(np.ascontiguousarray(emb, dtype=np.float32))
        new_ids = [d["id"] for d in docs]
        width = max(self.ids.dtype.itemsize // 4, max(len(i) for i in new_ids))
        ids = np.concatenate([self.ids.astype(f"<U{width}"), np.asarray(new_ids, dtype=f"<U{width}")])
        dtype = self.config["dtype"]
        all_emb = np.concatenate([np.asarray(self.embeddings, dtype=dtype), emb.astype(dtype)])
        config = {**self.config, "count": int(len(ids)), "versions": _versions()}
        out.mkdir(parents=True, exist_ok=True)
        self._write(out, config, ids, all_emb, self.index)
        logger.info("dense index: added %d docs (now %d)", len(docs), len(ids))
        return DenseIndex(out, config, ids, all_emb, self.index, self.encoder)

    # -- searching -----------------------------------------------------------------------------
    def _searcher(self):
        if self._search_index is None:
            faiss = _faiss()
            index = self.index
            with contextlib.suppress(Exception):
                faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(self.config.get("nprobe", 16)))
            with contextlib.suppress(Exception):
                faiss.ParameterSpace().set_index_parameter(index, "efSearch", int(self.config.get("ef_search", 128)))
            gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
            if gpus > 0:
                try:
                    index = faiss.index_cpu_to_all_gpus(index)
                    logger.info("faiss: searching on %d GPU(s)", gpus)
                except Exception as err:  # e.g. HNSW has no GPU version
                    logger.info("faiss: %s stays on CPU (%s)", self.config["faiss_factory"], err)
            else:
                logger.info("faiss: searching on CPU (no GPU faiss)")
            self._search_index = index
        return self._search_index

    def search_vectors(self, vectors: np.ndarray, k: int, exclude: Sequence[Iterable[str] | None] | None = None
                       ) -> Results:
        """Search with already-encoded (unit) query vectors; see :meth:`retrieve`."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        extra = max((len(set(e)) for e in exclude if e), default=0) if exclude is not None else 0
        depth = min(len(self.ids), k + extra)
        if n == 0 or depth == 0:
            return Results.empty(n, k)
        scores, rows = self._searcher().search(vectors, depth)  # (n, depth)
        out_ids: list[list[str]] = []
        out_scores: list[list[float]] = []
        for i in range(n):
            skip = set(exclude[i]) if exclude is not None and exclude[i] else set()
            row_ids, row_scores = [], []
            for r, s in zip(rows[i], scores[i]):
                if r < 0:
                    continue
                doc_id = str(self.ids[r])
                if doc_id in skip:
                    continue
                row_ids.append(doc_id)
                row_scores.append(float(s))
                if len(row_ids) == k:
                    break
            out_ids.append(row_ids)
            out_scores.append(row_scores)
        return Results.from_lists(out_ids, out_scores, k=k)

    def retrieve(self, queries: Sequence[str], k: int = 10, exclude: Sequence[Iterable[str] | None] | None = None,
                 show_progress: bool = False) -> Results:
        """Top-``k`` documents by cosine similarity for each query.

        Args:
            queries: query strings (encoded as they are).
            k: hits per query; rows are padded with ``""``/``-inf`` when the index is smaller.
            exclude: per-query collections of document ids to drop (e.g. ``[{qid}]`` to remove the
                query's own id, as Anserini's ``-removeQuery``).

        Returns:
            :class:`~indexer.results.Results` with cosine scores, best first.
        """
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, not one string")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        vectors = self.encoder.encode_queries(list(queries), show_progress=show_progress)
        return self.search_vectors(vectors, k, exclude)


def _count(items: Sequence[str]):
    from collections import Counter

    return Counter(items).items()


def _versions() -> dict[str, str]:
    import faiss

    out = {"faiss": faiss.__version__, "numpy": np.__version__}
    with contextlib.suppress(ImportError):
        import sentence_transformers

        out["sentence_transformers"] = sentence_transformers.__version__
    return out


__all__ = ["DenseIndex", "encode_sharded", "storage_factory"]
