"""Elasticsearch backend: request bodies and bulk actions (checked with the client's own helpers),
response parsing, and integration tests against a real server when ELASTICSEARCH_URL is set."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

pytest.importorskip("elasticsearch", reason="the es extra is not installed (pip install 'wandao[es]')")

from elasticsearch import helpers  # noqa: E402

from indexer.elastic import (ElasticIndex, bm25_body, bulk_actions, index_body, knn_body,  # noqa: E402
                             parse_hits, rrf_body)

DOCS = [
    {"id": "d1", "title": "Coffee", "text": "Coffee drinking and heart disease."},
    {"id": "d2", "title": "", "text": "Vitamin D supplements in older adults."},
]


def test_index_body_has_bm25_english_and_vectors():
    body = index_body(k1=1.2, b=0.75, dims=384, meta={"wandao": {"model": "m"}})
    assert body["settings"]["similarity"] == {"wandao_bm25": {"type": "BM25", "k1": 1.2, "b": 0.75}}
    contents = body["mappings"]["properties"]["contents"]
    assert contents == {"type": "text", "analyzer": "english", "similarity": "wandao_bm25"}
    assert body["mappings"]["properties"]["embedding"] == {"type": "dense_vector", "dims": 384, "index": True,
                                                          "similarity": "cosine"}
    assert body["mappings"]["_meta"] == {"wandao": {"model": "m"}}
    assert "embedding" not in index_body()["mappings"]["properties"]  # BM25-only index
    with pytest.raises(ValueError, match="0 <= b <= 1"):
        index_body(b=1.5)
    json.dumps(body)  # the body is plain JSON


def test_bulk_actions_are_what_the_client_sends():
    emb = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    actions = list(bulk_actions(DOCS, "scifact", emb))
    # the client's own expansion of each action into the bulk API's two lines
    header, source = helpers.expand_action(actions[0])
    assert header == {"index": {"_id": "d1", "_index": "scifact"}}
    assert source == {"id": "d1", "title": "Coffee", "text": "Coffee drinking and heart disease.",
                      "contents": "Coffee Coffee drinking and heart disease.",  # title + " " + text
                      "embedding": [pytest.approx(0.6), pytest.approx(0.8)]}
    header, source = helpers.expand_action(actions[1])
    assert source["contents"] == "Vitamin D supplements in older adults."  # no title: no leading space
    assert all(isinstance(x, float) for x in source["embedding"])
    assert "embedding" not in list(bulk_actions(DOCS, "x"))[0]["_source"]


def test_search_bodies():
    assert bm25_body("coffee", 10) == {"query": {"match": {"contents": "coffee"}}, "size": 10, "_source": False}
    knn = knn_body(np.array([0.5, 0.5], np.float32), 10)
    assert knn["knn"] == {"field": "embedding", "query_vector": [0.5, 0.5], "k": 10, "num_candidates": 100}
    rrf = rrf_body("coffee", [0.1, 0.2], size=10, window=50, rank_constant=60)["retriever"]["rrf"]
    assert rrf["rank_window_size"] == 50 and rrf["rank_constant"] == 60
    assert rrf["retrievers"][0] == {"standard": {"query": {"match": {"contents": "coffee"}}}}
    assert rrf["retrievers"][1]["knn"]["k"] == 50
    json.dumps(rrf)


def test_parse_hits_excludes_and_cuts():
    response = {"hits": {"hits": [{"_id": "q1", "_score": 9.0}, {"_id": "d1", "_score": 5.0},
                                  {"_id": "d2", "_score": 4.0}, {"_id": "d3", "_score": 1.0}]}}
    assert parse_hits(response, 2, exclude={"q1"}) == (["d1", "d2"], [5.0, 4.0])
    with pytest.raises(RuntimeError, match="search failed"):
        parse_hits({"error": {"type": "parsing_exception"}, "status": 400}, 10)


def test_connect_needs_a_url(monkeypatch):
    from indexer.elastic import connect

    monkeypatch.delenv("ELASTICSEARCH_URL", raising=False)
    with pytest.raises(ValueError, match="ELASTICSEARCH_URL"):
        connect()


# -- integration: a real cluster ------------------------------------------------------------------
needs_es = pytest.mark.skipif(not os.environ.get("ELASTICSEARCH_URL"),
                              reason="no Elasticsearch server: set ELASTICSEARCH_URL=http://host:9200 to run")


@pytest.fixture(scope="module")
def es_index(tmp_path_factory):
    from indexer.data import read_corpus

    docs = read_corpus("scifact")[:200]
    name = f"wandao-test-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("es")
    index = ElasticIndex.build(docs, out, index=name, encoder_backend="onnx-int8", show_progress=False)
    yield docs, out, index
    index.client.indices.delete(index=name)


@pytest.mark.needs_es
@needs_es
def test_es_bm25_knn_hybrid(es_index):
    docs, out, index = es_index
    assert index.client.count(index=index.index)["count"] == 200
    queries = [docs[0]["title"], docs[1]["title"]]
    for mode in ("bm25", "knn"):
        res = index.retrieve(queries, k=5, mode=mode)
        assert res.ids[0, 0] == docs[0]["id"] and res.ids[1, 0] == docs[1]["id"], mode
    res = index.retrieve(queries, k=5, mode="bm25", exclude=[{docs[0]["id"]}, None])
    assert docs[0]["id"] not in res.ids[0].tolist()
    client_fused = index.retrieve(queries, k=5, mode="hybrid", fusion="client")
    assert client_fused.ids[0, 0] == docs[0]["id"]
    reopened = ElasticIndex.load(out)
    assert reopened.retrieve(queries, k=5, mode="bm25").ids.tolist() == index.retrieve(queries, k=5).ids.tolist()


@pytest.mark.needs_es
@needs_es
def test_es_server_rrf(es_index):
    from elasticsearch import ApiError

    docs, _, index = es_index
    try:
        res = index.retrieve([docs[0]["title"]], k=5, mode="hybrid", fusion="server")
    except (ApiError, RuntimeError) as err:  # RRF needs a licence that allows it
        if "license" in str(err).lower() or "non-compliant" in str(err).lower():
            pytest.skip(f"the server's licence does not allow the rrf retriever: {err}")
        raise
    assert res.ids[0, 0] == docs[0]["id"]
