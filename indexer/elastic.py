"""Elasticsearch backend (extra ``es``): BM25, dense kNN and hybrid search on a cluster.

Built on the official ``elasticsearch`` client:

- the index is created with a BM25 similarity (``k1``, ``b``; Lucene's defaults in Anserini are
  0.9/0.4) on a ``contents`` field (``title + " " + text``, as Anserini indexes BEIR) analysed by
  Elasticsearch's built-in ``english`` analyzer (possessives, lowercase, English stopwords, Porter
  stemming), and, when an encoder is given, a ``dense_vector`` field ``embedding`` (cosine);
- documents are bulk-ingested with :func:`elasticsearch.helpers.streaming_bulk`, embeddings computed
  by :class:`indexer.encode.Encoder` chunk by chunk;
- searches go through ``msearch``: ``bm25`` (a ``match`` query), ``knn`` (approximate kNN) and
  ``hybrid``: the server's ``rrf`` retriever (Elasticsearch 8.14+ retriever API; RRF needs a
  licence that allows it) or, with ``fusion="client"``, BM25 and kNN lists fused here with
  :func:`indexer.hybrid.reciprocal_rank_fusion`.

The request bodies are built by plain functions (:func:`index_body`, :func:`bulk_actions`,
:func:`bm25_body`, :func:`knn_body`, :func:`rrf_body`) so they can be read and tested without a
server. The client must match the server's major version (``pip install "elasticsearch>=8,<9"``
for an 8.x cluster). Integration tests run when ``ELASTICSEARCH_URL`` is set.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from indexer.encode import Encoder, doc_text
from indexer.results import Results

logger = logging.getLogger(__name__)

CONFIG = "elastic.json"
URL_ENV = "ELASTICSEARCH_URL"
MODES = ("bm25", "knn", "hybrid")


def is_elasticsearch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("elasticsearch") is not None


def connect(url: str | None = None, **kwargs: Any):
    """An :class:`elasticsearch.Elasticsearch` client for ``url`` (default ``$ELASTICSEARCH_URL``).

    Extra keyword arguments (``api_key``, ``basic_auth``, ``ca_certs``, ...) go to the client.
    """
    if not is_elasticsearch_available():
        raise ImportError("the Elasticsearch backend needs the es extra: pip install 'wandao[es]'")
    from elasticsearch import Elasticsearch

    url = url or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(f"no Elasticsearch URL: pass --es-url or set {URL_ENV} (e.g. http://localhost:9200)")
    return Elasticsearch(url, **kwargs)


# -- request bodies ----------------------------------------------------------------------------
def index_body(k1: float = 0.9, b: float = 0.4, dims: int | None = None, shards: int = 1, replicas: int = 0,
               vector_index_options: dict | None = None, meta: dict | None = None) -> dict:
    """Settings and mappings for ``indices.create``.

    Example:
        >>> body = index_body(k1=0.9, b=0.4, dims=384)
        >>> body["settings"]["similarity"]["wandao_bm25"]
        {'type': 'BM25', 'k1': 0.9, 'b': 0.4}
        >>> body["mappings"]["properties"]["embedding"]["dims"]
        384
    """
    if k1 < 0 or not 0 <= b <= 1:
        raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    text = {"type": "text", "analyzer": "english", "similarity": "wandao_bm25"}
    properties: dict[str, Any] = {
        "id": {"type": "keyword"},
        "title": {"type": "text", "analyzer": "english", "similarity": "wandao_bm25"},
        "text": {"type": "text", "analyzer": "english", "similarity": "wandao_bm25"},
        "contents": text,
    }
    if dims is not None:
        vector: dict[str, Any] = {"type": "dense_vector", "dims": int(dims), "index": True, "similarity": "cosine"}
        if vector_index_options:
            vector["index_options"] = vector_index_options
        properties["embedding"] = vector
    mappings: dict[str, Any] = {"dynamic": "strict", "properties": properties}
    if meta:
        mappings["_meta"] = meta
    return {
        "settings": {
            "number_of_shards": shards,
            "number_of_replicas": replicas,
            "similarity": {"wandao_bm25": {"type": "BM25", "k1": float(k1), "b": float(b)}},
        },
        "mappings": mappings,
    }


def bulk_actions(docs: Iterable[dict], index: str, embeddings: np.ndarray | None = None) -> Iterator[dict]:
    """Bulk ``index`` actions for :func:`elasticsearch.helpers.streaming_bulk` (``_id`` = document id).

    Example:
        >>> next(bulk_actions([{"id": "d1", "title": "T", "text": "body"}], "idx"))
        {'_op_type': 'index', '_index': 'idx', '_id': 'd1', '_source': {'id': 'd1', 'title': 'T', 'text': 'body', 'contents': 'T body'}}
    """
    for i, doc in enumerate(docs):
        source: dict[str, Any] = {"id": doc["id"], "title": doc.get("title") or "", "text": doc.get("text") or "",
                                  "contents": doc_text(doc)}
        if embeddings is not None:
            source["embedding"] = [float(x) for x in embeddings[i]]
        yield {"_op_type": "index", "_index": index, "_id": doc["id"], "_source": source}


def bm25_body(query: str, size: int) -> dict:
    """A BM25 ``match`` search on ``contents`` (ids only)."""
    return {"query": {"match": {"contents": query}}, "size": size, "_source": False}


def knn_body(vector: Sequence[float], size: int, num_candidates: int | None = None) -> dict:
    """An approximate kNN search on ``embedding``."""
    num_candidates = max(num_candidates or 0, size, 100)
    return {"knn": {"field": "embedding", "query_vector": [float(x) for x in vector], "k": size,
                    "num_candidates": num_candidates}, "size": size, "_source": False}


def rrf_body(query: str, vector: Sequence[float], size: int, window: int = 100, rank_constant: int = 60,
             num_candidates: int | None = None) -> dict:
    """Hybrid search with the server's ``rrf`` retriever over a BM25 ``standard`` retriever and a ``knn`` one."""
    window = max(window, size)
    return {
        "retriever": {"rrf": {
            "retrievers": [
                {"standard": {"query": {"match": {"contents": query}}}},
                {"knn": {"field": "embedding", "query_vector": [float(x) for x in vector], "k": window,
                         "num_candidates": max(num_candidates or 0, window, 100)}},
            ],
            "rank_window_size": window,
            "rank_constant": rank_constant,
        }},
        "size": size,
        "_source": False,
    }


def parse_hits(response: dict, k: int, exclude: Iterable[str] | None = None) -> tuple[list[str], list[float]]:
    """(ids, scores) of a search response's hits, best first, without ``exclude``, at most ``k``."""
    if "error" in response:
        raise RuntimeError(f"Elasticsearch search failed: {json.dumps(response['error'])[:500]}")
    skip = set(exclude or ())
    ids, scores = [], []
    for hit in response.get("hits", {}).get("hits", []):
        if hit["_id"] in skip:
            continue
        ids.append(hit["_id"])
        scores.append(float(hit["_score"]) if hit.get("_score") is not None else float("nan"))
        if len(ids) == k:
            break
    return ids, scores


class ElasticIndex:
    """An Elasticsearch index searched with BM25, kNN or hybrid; returns :class:`Results`.

    Example:
        >>> es = ElasticIndex.build(docs, "runs/es-scifact", index="scifact", url="http://localhost:9200")  # doctest: +SKIP
        >>> es.retrieve(["coffee and heart disease"], k=10, mode="hybrid").ids  # doctest: +SKIP
    """

    def __init__(self, client, index: str, config: dict, encoder: Encoder | None = None):
        self.client = client
        self.index = index
        self.config = config
        self.encoder = encoder

    @classmethod
    def build(cls, docs: Iterable[dict], out_dir: str | os.PathLike | None = None, index: str = "wandao",
              client=None, url: str | None = None, k1: float = 0.9, b: float = 0.4, dense: bool = True,
              model: str | None = None, encoder_backend: str = "auto", encoder: Encoder | None = None,
              force: bool = False, chunk_size: int = 512, shards: int = 1, replicas: int = 0,
              vector_index_options: dict | None = None, show_progress: bool = True) -> "ElasticIndex":
        """Create ``index`` on the cluster and bulk-ingest ``docs``.

        Args:
            docs: ``{"id","title","text"}`` dicts.
            out_dir: optional folder for ``elastic.json`` (cluster URL without credentials, index name,
                settings), so :meth:`load` can reopen it like any other backend.
            index: the Elasticsearch index name.
            client, url: an ``Elasticsearch`` client, or a URL (default ``$ELASTICSEARCH_URL``).
            k1, b: BM25 parameters.
            dense, model, encoder_backend, encoder: add a ``dense_vector`` field encoded with this model.
            force: delete an existing index of that name first (otherwise it is an error).
            chunk_size: documents per encoding and bulk chunk.
        """
        from elasticsearch import helpers
        from tqdm.auto import tqdm

        client = client or connect(url)
        if dense and encoder is None:
            encoder = Encoder(model, backend=encoder_backend)
        if not dense:
            encoder = None
        config = {"index": index, "k1": k1, "b": b, "analyzer": "english", "field": "contents",
                  "encoder": encoder.info() if encoder is not None else None}
        if client.indices.exists(index=index):
            if not force:
                raise FileExistsError(f"Elasticsearch index {index!r} already exists; pass --force to replace it")
            client.indices.delete(index=index)
        meta = {"wandao": {"k1": k1, "b": b,
                           "model": encoder.model_name if encoder else None,
                           "fingerprint": encoder.fingerprint if encoder else None}}
        body = index_body(k1=k1, b=b, dims=encoder.dim if encoder else None, shards=shards, replicas=replicas,
                          vector_index_options=vector_index_options, meta=meta)
        client.indices.create(index=index, settings=body["settings"], mappings=body["mappings"])
        out = cls(client, index, config, encoder)
        count = out._ingest(docs, chunk_size, show_progress, helpers, tqdm)
        config["count"] = count
        if out_dir is not None:
            from indexer.io import atomic_write_text

            Path(out_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(out_dir) / CONFIG, json.dumps({**config, "url": _public_url(client)}, indent=2))
        logger.info("Elasticsearch index %s: %d documents", index, count)
        return out

    def _ingest(self, docs: Iterable[dict], chunk_size: int, show_progress: bool, helpers, tqdm) -> int:
        bar = tqdm(desc="es bulk", unit="doc", disable=not show_progress)
        count, chunk = 0, []

        def flush(chunk: list[dict]) -> int:
            emb = self.encoder.encode_documents(chunk) if self.encoder is not None else None
            n = 0
            for ok, item in helpers.streaming_bulk(self.client, bulk_actions(chunk, self.index, emb),
                                                   chunk_size=chunk_size, raise_on_error=True):
                n += int(ok)
            bar.update(len(chunk))
            return n

        for doc in docs:
            chunk.append(doc)
            if len(chunk) == chunk_size:
                count += flush(chunk)
                chunk = []
        if chunk:
            count += flush(chunk)
        bar.close()
        self.client.indices.refresh(index=self.index)
        return count

    @classmethod
    def load(cls, path: str | os.PathLike, client=None, url: str | None = None,
             encoder_backend: str | None = None) -> "ElasticIndex":
        """Reopen an index from the ``elastic.json`` that :meth:`build` wrote into ``path``."""
        cfg_path = Path(path) / CONFIG
        if not cfg_path.exists():
            raise FileNotFoundError(f"{path} has no {CONFIG}; build it with ElasticIndex.build(..., out_dir=...)")
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        client = client or connect(url or os.environ.get(URL_ENV) or config.get("url"))
        encoder = None
        if config.get("encoder"):
            from indexer.encode import DEFAULT_MODEL

            enc = config["encoder"]
            model = None if enc["model"] == DEFAULT_MODEL else enc["model"]
            encoder = Encoder(model, backend=encoder_backend or enc["backend"])
        return cls(client, config["index"], config, encoder)

    def info(self) -> dict:
        """What the manifest records: index name, BM25 settings, analyzer, encoder, count, versions."""
        import elasticsearch

        enc = self.config.get("encoder") or {}
        return {"backend": "elasticsearch", "index": self.index, "k1": self.config["k1"], "b": self.config["b"],
                "analyzer": "es-english", "model": enc.get("model"), "dim": enc.get("dim"),
                "count": self.config.get("count"), "versions": {"elasticsearch_client": elasticsearch.__versionstr__}}

    def add(self, docs: Iterable[dict], chunk_size: int = 512, show_progress: bool = True) -> "ElasticIndex":
        """Bulk-ingest more documents (same id replaces the stored document)."""
        from elasticsearch import helpers
        from tqdm.auto import tqdm

        n = self._ingest(docs, chunk_size, show_progress, helpers, tqdm)
        self.config["count"] = int(self.config.get("count") or 0) + n
        return self

    def retrieve(self, queries: Sequence[str], k: int = 10, exclude: Sequence[Iterable[str] | None] | None = None,
                 mode: str = "bm25", fusion: str = "server", depth: int = 100, rrf_k: int = 60,
                 batch: int = 64) -> Results:
        """Search the cluster.

        Args:
            queries: query strings.
            k: hits per query.
            exclude: per-query ids to drop.
            mode: ``bm25``, ``knn`` or ``hybrid``.
            fusion: for ``hybrid``: ``server`` (the ``rrf`` retriever) or ``client``
                (:func:`indexer.hybrid.reciprocal_rank_fusion` over BM25 and kNN lists of ``depth``).
            depth: RRF window per retriever.
            batch: queries per ``msearch`` request.
        """
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, not one string")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != "bm25" and self.encoder is None:
            raise ValueError(f"index {self.index!r} has no dense_vector field; rebuild with dense=True for {mode}")
        if fusion not in ("server", "client"):
            raise ValueError(f"unknown fusion {fusion!r}; choose server or client")
        queries = list(queries)
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        if mode == "hybrid" and fusion == "client":
            from indexer.hybrid import reciprocal_rank_fusion

            lists = [self.retrieve(queries, max(depth, k), exclude, mode=m, batch=batch) for m in ("bm25", "knn")]
            return reciprocal_rank_fusion(lists, k=k, rrf_k=rrf_k)
        vectors = self.encoder.encode_queries(queries) if mode != "bm25" else None
        ids_out, scores_out = [], []
        for start in range(0, len(queries), batch):
            searches: list[dict] = []
            for i in range(start, min(start + batch, len(queries))):
                size = k + (len(set(exclude[i])) if exclude is not None and exclude[i] else 0)
                if mode == "bm25":
                    body = bm25_body(queries[i], size)
                elif mode == "knn":
                    body = knn_body(vectors[i], size)
                else:
                    body = rrf_body(queries[i], vectors[i], size, window=max(depth, size), rank_constant=rrf_k)
                searches.extend([{"index": self.index}, body])
            responses = self.client.msearch(searches=searches)["responses"]
            for j, resp in enumerate(responses):
                i = start + j
                ids, scores = parse_hits(resp, k, exclude[i] if exclude is not None else None)
                ids_out.append(ids)
                scores_out.append(scores)
        return Results.from_lists(ids_out, scores_out, k=k)


def _public_url(client) -> str | None:
    """The first node's URL without credentials (never written to disk with a password)."""
    try:
        node = client.transport.node_pool.all()[0].config
        return f"{node.scheme}://{node.host}:{node.port}{node.path_prefix or ''}"
    except Exception:
        return None
