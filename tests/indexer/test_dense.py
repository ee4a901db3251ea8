"""Dense retrieval: the bundled MiniLM encoder (plain and ONNX paths agree), faiss indexes against
IndexFlat, fp16 storage, IVF-PQ, resumable sharded encoding, add, and the SciFact golden number (slow)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model must never touch the network

from indexer.encode import Encoder, default_model_path, doc_text, resolve_model, token_budget_batches  # noqa: E402
from indexer.results import NO_DOC  # noqa: E402

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def scifact(data_dir):
    from indexer.data import beir_paths, load_queries, read_corpus

    docs = read_corpus("scifact")
    _, qpath, _ = beir_paths("scifact")
    return docs, load_queries(qpath)


@pytest.fixture(scope="module")
def short_docs(scifact):
    """300 real SciFact documents, shortened (title + first 160 characters) to keep encoding fast."""
    docs, _ = scifact
    return [{"id": d["id"], "title": d["title"], "text": d["text"][:160]} for d in docs[:300]]


@pytest.fixture(scope="module")
def encoder():
    return Encoder(backend="onnx-int8")


@pytest.fixture(scope="module")
def short_emb(encoder, short_docs):
    return encoder.encode_documents(short_docs)


def test_default_model_comes_from_the_package():
    path = default_model_path()
    assert (path / "model.safetensors").exists() and (path / "modules.json").exists()
    assert resolve_model(None) == str(path) == resolve_model("all-MiniLM-L6-v2")
    assert resolve_model("some-org/some-model") == "some-org/some-model"  # hub ids pass through


def test_doc_text_joins_title_and_text_with_a_space():
    assert doc_text({"title": "Title", "text": "Body."}) == "Title Body."
    assert doc_text({"title": "", "text": "Body."}) == "Body."


def test_token_budget_batches():
    # lengths 3,10,5,4 sorted longest first: [1(10)], then 2(5) and 3(4): 2*5=10 <= 10, then [0(3)] (3*... alone left)
    assert [b.tolist() for b in token_budget_batches([3, 10, 5, 4], token_budget=10, max_batch=8)] == [[1], [2, 3], [0]]
    # max_batch caps the size even when the budget would allow more
    assert [b.tolist() for b in token_budget_batches([1] * 5, token_budget=100, max_batch=2)] == [[0, 1], [2, 3], [4]]


def test_onnx_paths_agree_with_plain_sentence_transformers(scifact):
    docs, queries = scifact
    sample = docs[:12]  # full-length abstracts, most truncated at 256 tokens
    plain = Encoder(backend="torch")
    ref = plain.encode_documents(sample)
    assert ref.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    fp32 = Encoder(backend="onnx").encode_documents(sample)
    int8 = Encoder(backend="onnx-int8").encode_documents(sample)
    assert np.min(np.sum(ref * fp32, axis=1)) > 0.9999  # same graph, fused kernels
    assert np.min(np.sum(ref * int8, axis=1)) >= 0.99  # int8 weights: per-document cosine
    qs = list(queries.values())[:8]
    assert np.min(np.sum(plain.encode_queries(qs) * Encoder(backend="onnx-int8").encode_queries(qs), axis=1)) >= 0.99


def test_per_token_int8_rewrite_by_hand(tmp_path):
    """One MatMul graph: rows are quantized with their own scale, weights per output column, as computed here."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from indexer.encode import quantize_per_token

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 3])],
                              [numpy_helper.from_array(w, "w")])
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize_per_token(src, dst) == 1
    assert "w" not in {i.name for i in onnx.load(str(dst)).graph.initializer}  # the float weight is gone
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    a = np.array([[[1.0, -2.0, 0.5, 127.0], [0.01, 0.02, -0.03, 0.0], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    s = np.abs(a).max(-1, keepdims=True) / 127.0  # one scale per row: 1.0, 0.03/127, 0
    a_q = np.round(a / np.maximum(s, 1e-12))
    ws = np.abs(w).max(0) / 127.0
    want = (a_q @ np.round(w / ws)) * np.maximum(s, 1e-12) * ws
    got = session.run(None, {"a": a})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[0, 2], 0.0)  # an all-zero row stays zero (no 0/0)
    # a row's output does not depend on the other rows: the tiny row alone gives the same numbers
    alone = session.run(None, {"a": a[:, 1:2]})[0]
    np.testing.assert_array_equal(alone[0, 0], got[0, 1])


def test_per_token_int8_encoder_is_batch_invariant_and_close_to_plain(scifact):
    """onnx-int8 scales activations per batch; onnx-int8-token per token: batched == alone, exactly."""
    docs, queries = scifact
    qs = list(queries.values())[:16]
    token = Encoder(backend="onnx-int8-token")
    batched = token.encode_queries(qs)
    alone = np.stack([token.encode_queries([q])[0] for q in qs])
    np.testing.assert_array_equal(batched, alone)
    per_batch = Encoder(backend="onnx-int8")
    assert np.abs(per_batch.encode_queries(qs) - np.stack([per_batch.encode_queries([q])[0] for q in qs])).max() > 1e-4
    sample = docs[:12]
    ref = Encoder(backend="torch").encode_documents(sample)
    assert np.min(np.sum(ref * token.encode_documents(sample), axis=1)) >= 0.997  # measured 0.9985 on 96 abstracts


def test_int8_export_keeps_the_quantizers_per_tensor_lines_out_of_the_log(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("WANDAO_CACHE_DIR", str(tmp_path))  # a fresh export, not the cached file
    with caplog.at_level(logging.INFO):
        path = Encoder(backend="onnx-int8").onnx_path()
        logging.getLogger().info("after the export")
    assert path.exists() and path.is_relative_to(tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    # onnxruntime's quantizer logs 40+ "Quantization parameters for tensor ..." lines through the root logger
    assert not [m for m in messages if "Quantization parameters" in m or "get_tensor_type" in m]
    assert "after the export" in messages and any(m.startswith("int8: keeping") for m in messages)
    assert not logging.getLogger().filters  # the filter is gone once the export is done


def _ids(docs):
    return [d["id"] for d in docs]


def test_hnsw_recall_against_flat(encoder, short_docs, short_emb, tmp_path, scifact):
    from indexer.dense import DenseIndex

    _, queries = scifact
    qs = list(queries.values())[:60]
    flat = DenseIndex.from_embeddings(_ids(short_docs), short_emb, tmp_path / "flat", encoder, factory="Flat")
    hnsw = DenseIndex.from_embeddings(_ids(short_docs), short_emb, tmp_path / "hnsw", encoder, factory="HNSW32")
    q = encoder.encode_queries(qs)
    a, b = flat.search_vectors(q, 10), hnsw.search_vectors(q, 10)
    recall = np.mean([len(set(a.ids[i]) & set(b.ids[i])) / 10 for i in range(len(qs))])
    assert recall >= 0.95, recall
    # exact search: scores are the cosine of the unit vectors
    emb = np.asarray(flat.embeddings)
    row = {d: i for i, d in enumerate(flat.ids.tolist())}
    np.testing.assert_allclose(a.scores[0], emb[[row[d] for d in a.ids[0]]] @ q[0], atol=1e-5)


def test_fp16_storage_round_trip(encoder, short_docs, short_emb, tmp_path):
    from indexer.dense import DenseIndex

    built = DenseIndex.from_embeddings(_ids(short_docs), short_emb, tmp_path / "fp16", encoder, factory="Flat",
                                       fp16=True)
    assert built.config["faiss_factory"] == "SQfp16"
    loaded = DenseIndex.load(tmp_path / "fp16", encoder=encoder)
    assert loaded.embeddings.dtype == np.float16 and isinstance(loaded.embeddings, np.memmap)
    np.testing.assert_allclose(np.asarray(loaded.embeddings, np.float32), short_emb, atol=1e-3)
    res = loaded.search_vectors(short_emb[:20], 1)
    assert res.ids[:, 0].tolist() == [d["id"] for d in short_docs[:20]]  # each doc finds itself
    np.testing.assert_allclose(res.scores[:, 0], 1.0, atol=2e-3)
    assert loaded.info()["dtype"] == "float16" and loaded.info()["count"] == 300


def test_ivfpq_builds_and_searches(encoder, short_docs, short_emb, tmp_path):
    from indexer.dense import DenseIndex

    index = DenseIndex.from_embeddings(_ids(short_docs), short_emb, tmp_path / "ivfpq", encoder,
                                       factory="IVF4,PQ16x4", nprobe=4)
    loaded = DenseIndex.load(tmp_path / "ivfpq", encoder=encoder)
    assert loaded.index.ntotal == 300 and index.config["faiss_factory"] == "IVF4,PQ16x4"
    res = loaded.search_vectors(short_emb[:50], 10)
    found = np.mean([short_docs[i]["id"] in res.ids[i].tolist() for i in range(50)])
    assert found >= 0.9, found  # PQ-compressed, but each doc is still among its own top 10


def test_bad_factory_names_the_flag(encoder, short_docs, tmp_path):
    from indexer.dense import DenseIndex

    with pytest.raises(ValueError, match="--faiss"):
        DenseIndex.build(short_docs[:10], tmp_path / "bad", encoder=encoder, factory="NotAFactory",
                         show_progress=False)


def test_retrieve_exclude_and_padding(encoder, short_docs, tmp_path):
    from indexer.dense import DenseIndex

    index = DenseIndex.build(short_docs[:5], tmp_path / "five", encoder=encoder, show_progress=False)
    query = doc_text(short_docs[0])
    res = index.retrieve([query, query], k=7, exclude=[None, {short_docs[0]["id"]}])
    assert res.ids.shape == (2, 7)
    assert res.ids[0, 0] == short_docs[0]["id"]
    assert short_docs[0]["id"] not in res.ids[1].tolist()
    assert res.count(0) == 5 and res.count(1) == 4  # only 5 documents: padded with NO_DOC / -inf
    assert res.ids[1, 4] == NO_DOC and np.isneginf(res.scores[1, 4])
    assert np.all(np.diff(res.scores[0, :5]) <= 0)


class CountingEncoder(Encoder):
    """The real encoder, counting how many times it encodes a shard of documents."""

    calls = 0

    def encode_documents(self, docs, show_progress=False):
        CountingEncoder.calls += 1
        return super().encode_documents(docs, show_progress)


def test_sharded_encoding_resumes_after_a_crash(short_docs, tmp_path):
    from indexer.dense import DenseIndex, encode_sharded

    docs = [{"id": d["id"], "title": d["title"], "text": ""} for d in short_docs[:40]]
    enc = CountingEncoder(backend="onnx-int8")
    clean = encode_sharded(enc, docs, tmp_path / "clean", shard_size=8, show_progress=False)
    assert CountingEncoder.calls == 5

    def crash_after_second(i, n):
        if i == 1:
            raise KeyboardInterrupt("killed")

    CountingEncoder.calls = 0
    with pytest.raises(KeyboardInterrupt):
        DenseIndex.build(docs, tmp_path / "out", encoder=enc, shard_size=8, show_progress=False,
                         on_shard=crash_after_second)
    assert CountingEncoder.calls == 2
    CountingEncoder.calls = 0
    index = DenseIndex.build(docs, tmp_path / "out", encoder=enc, shard_size=8, show_progress=False)
    assert CountingEncoder.calls == 3  # shards 0 and 1 came from disk
    np.testing.assert_allclose(np.asarray(index.embeddings), clean, atol=1e-6)

    # a shard whose documents changed is encoded again, not reused
    work = tmp_path / "work"
    encode_sharded(enc, docs, work, shard_size=8, show_progress=False)
    changed = [dict(d) for d in docs]
    changed[9]["text"] = "A different abstract about zebrafish."
    CountingEncoder.calls = 0
    out = encode_sharded(enc, changed, work, shard_size=8, show_progress=False)
    assert CountingEncoder.calls == 1
    assert np.dot(out[9], clean[9]) < 0.99


def test_add_equals_full_build(short_docs, tmp_path, scifact):
    from indexer.dense import DenseIndex

    # float32 ONNX: a document's vector does not depend on the other documents in its batch
    # (int8 dynamic quantization scales activations per batch, so it would differ slightly).
    encoder = Encoder(backend="onnx")
    _, queries = scifact
    docs = [{"id": d["id"], "title": d["title"], "text": ""} for d in short_docs[:60]]
    full = DenseIndex.build(docs, tmp_path / "full", encoder=encoder, show_progress=False)
    part = DenseIndex.build(docs[:45], tmp_path / "part", encoder=encoder, show_progress=False)
    grown = part.add(docs[45:], tmp_path / "part", show_progress=False)
    reopened = DenseIndex.load(tmp_path / "part", encoder=encoder)
    assert reopened.info()["count"] == 60
    qs = list(queries.values())[:10]
    for idx in (grown, reopened):
        res = idx.retrieve(qs, k=10)
        ref = full.retrieve(qs, k=10)
        assert res.ids.tolist() == ref.ids.tolist()
        np.testing.assert_allclose(res.scores, ref.scores, atol=1e-5)
    with pytest.raises(ValueError, match="already in the dense index"):
        reopened.add(docs[:1], show_progress=False)


def test_info_for_the_manifest(encoder, short_docs, tmp_path):
    from indexer.dense import DenseIndex

    info = DenseIndex.build(short_docs[:10], tmp_path / "i", encoder=encoder, factory="HNSW32",
                            show_progress=False).info()
    assert not list((tmp_path / "i").glob(".*"))  # no temporary files left behind
    assert info["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["dim"] == 384 and info["normalize"] is True and info["metric"] == "inner_product"
    assert info["faiss_factory"] == "HNSW32" and info["count"] == 10 and info["encoder_backend"] == "onnx-int8"
    assert len(info["fingerprint"]) == 64 and "faiss" in info["versions"]


@pytest.mark.slow
def test_scifact_dense_ndcg_golden(scifact, tmp_path):
    """SciFact test split, all-MiniLM-L6-v2, Flat, query's own id removed (measured 2025: see bench/out/dense.md)."""
    import pytrec_eval

    from indexer.data import beir_paths, load_qrels
    from indexer.dense import DenseIndex

    docs, queries = scifact
    qrels = load_qrels(beir_paths("scifact")[2])
    qids = [q for q in queries if q in qrels]
    index = DenseIndex.build(docs, tmp_path / "scifact", show_progress=False)
    res = index.retrieve([queries[q] for q in qids], k=10, exclude=[{q} for q in qids])
    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}).evaluate(res.to_run(qids))
    ndcg = float(np.mean([v["ndcg_cut_10"] for v in scores.values()]))
    assert ndcg >= 0.640, ndcg
