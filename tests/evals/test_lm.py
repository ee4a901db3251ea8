"""feedback-mc and lm on a tiny, locally built GPT-2, checked against direct forward passes."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest


@pytest.fixture(scope="module")
def lm(tiny_gpt2):
    from evals.scorers import HFCausalLM

    return HFCausalLM(str(tiny_gpt2), device="cpu", batch_size=3)


def _direct_logprob(lm, context: str, continuation: str) -> float:
    import torch

    ctx, cont = lm.encode(context), lm.encode(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(ids).logits[0], -1)
    return sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


def test_loglikelihood_matches_a_direct_forward(lm):
    reqs = [("The answer is:", " (A)"), ("The answer is:", " (B)"), ("Human: can you help me?", " Sure"),
            ("To be, or not ", "to be")]  # trailing space moves to the continuation
    got = lm.loglikelihood(reqs)
    for (c, x), g in zip(reqs[:3], got[:3]):
        assert g == pytest.approx(_direct_logprob(lm, c, x), abs=1e-4)
    assert got[3] == pytest.approx(_direct_logprob(lm, "To be, or not", " to be"), abs=1e-4)
    # a context longer than the window is cut from the left and still scores the whole continuation
    long = lm.loglikelihood([("Sure, I can help. " * 20, " (A)")])[0]
    assert math.isfinite(long) and long < 0


def test_sliding_window_counts_every_token_once(lm):
    import torch

    text = "Here is a conversation between a human and an assistant."
    ids = [lm.tokenizer.bos_token_id] + lm.encode(text)
    assert len(ids) < lm.max_length  # one window: equals HF's own loss over the whole sequence
    total, count, _ = lm.sliding_window_nll(ids, stride=lm.max_length)
    with torch.inference_mode():
        hf = lm.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert count == len(ids) - 1 and total / count == pytest.approx(hf, abs=1e-5)
    long_ids = [lm.tokenizer.bos_token_id] + lm.encode(text * 8)
    assert len(long_ids) > 2 * lm.max_length
    for stride in (16, 40, lm.max_length):
        total_s, count_s, rows = lm.sliding_window_nll(long_ids, stride=stride)
        assert count_s == len(long_ids) - 1 == sum(r["scored"] for r in rows)
        assert all(r["end"] - 1 - r["begin"] <= lm.max_length for r in rows)  # inputs fit the window
    with pytest.raises(ValueError, match="--stride"):
        lm.sliding_window_nll(long_ids, stride=lm.max_length + 1)


def test_lm_suite_bits_per_byte(tiny_gpt2, tmp_path):
    import evals

    text_file = tmp_path / "t.txt"
    text_file.write_text("To be, or not to be, that is the question. " * 10, encoding="utf-8")
    res = evals.run("lm", out=tmp_path / "run", model=str(tiny_gpt2), dataset=str(text_file), stride=32)
    m = res.metrics
    n_bytes = len(text_file.read_bytes())
    nll = m["nll_per_token"] * m["tokens"]
    assert m["bytes"] == n_bytes and m["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes)
    assert m["perplexity"] == pytest.approx(math.exp(m["nll_per_token"]))
    # BOS in front: every text token is predicted
    from transformers import AutoTokenizer

    n_tokens = len(AutoTokenizer.from_pretrained(str(tiny_gpt2))(text_file.read_text(), add_special_tokens=False)["input_ids"])
    assert m["tokens"] == n_tokens == sum(r["scored"] for r in res.per_example)
    assert (tmp_path / "run" / "report.md").exists()


class _CompletionsHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible /completions endpoint over the tiny model: echo + per-token logprobs."""

    lm = None

    def do_POST(self):  # noqa: N802
        import torch

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        lm, prompt = type(self).lm, body["prompt"]
        enc = lm.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0], -1)
        token_lps = [None] + [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]  # the first has none
        payload = json.dumps({"choices": [{"text": prompt, "logprobs": {
            "tokens": lm.tokenizer.convert_ids_to_tokens(enc["input_ids"]), "token_logprobs": token_lps,
            "text_offset": [s for s, _ in enc["offset_mapping"]]}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_feedback_mc_suite_and_endpoint_scorer(tiny_gpt2, lm, tmp_path):
    import evals
    from evals.scorers import OpenAICompletions
    from evals.suites.feedback_mc import load_items, score_items

    items = [{"prompt": "Human: can you help me?\n\nThe answer is:", "corrects": [" (B)"], "incorrects": [" (A)"]},
             {"prompt": "Choose:\n (A) x\n (B) y\n (C) z\nThe answer is:", "corrects": [" (C)"],
              "incorrects": [" (A)", " (B)"]}]
    path = tmp_path / "Mini.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    res = evals.run("feedback-mc", out=tmp_path / "run", model=str(tiny_gpt2), dataset=str(path))
    rows = res.per_example
    for it, row in zip(items, rows):  # decided by the direct log-probs of each option
        c = [_direct_logprob(lm, it["prompt"], o) for o in it["corrects"]]
        w = [_direct_logprob(lm, it["prompt"], o) for o in it["incorrects"]]
        assert row["correct"] == (max(c) > max(w)) and row["margin"] == pytest.approx(max(c) - max(w), abs=1e-4)
    assert res.metrics["accuracy"] == sum(r["correct"] for r in rows) / 2 and res.metrics["count"] == 2
    assert res.metrics["accuracy/Mini"] == res.metrics["accuracy"]

    _CompletionsHandler.lm = lm
    server = HTTPServer(("127.0.0.1", 0), _CompletionsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = score_items(load_items(path), OpenAICompletions(f"http://127.0.0.1:{server.server_port}/v1", "tiny"))
    finally:
        server.shutdown()
    # the endpoint tokenises prompt+option jointly; with byte-level BPE and options starting with a
    # space the split is the same, so the numbers agree
    for r, l in zip(remote, rows):
        assert r["margin"] == pytest.approx(l["margin"], abs=1e-3) and r["correct"] == l["correct"]


def test_feedback_mc_reads_the_constitutional_ai_evals(data_dir):
    from evals.suites.feedback_mc import eval_files, load_items

    files = eval_files("constitutional-ai")
    assert [f.stem for f in files] == ["438HHHEvaluations", "HarmfulVsEthical", "HarmfulnessClassification"]
    items = load_items(files[2], limit=5)
    assert len(items) == 5 and len(items[0]["corrects"]) == 1 and len(items[0]["incorrects"]) == 8


# ------------------------------------------------------------------- lm through wandao serve


@pytest.fixture(scope="module")
def served_gpt2(tiny_gpt2):
    """``wandao serve`` over the tiny GPT-2 on loopback (the serve tests' LiveServer), prompts capped at 48
    tokens: a legacy echo request holds at most 48 tokens, so the lm suite's windows are at most 47 + 1."""
    from rag.serve.app import ServeConfig, create_app
    from tests.rag.serve.conftest import LiveServer, free_port

    srv = LiveServer(create_app(ServeConfig(model=str(tiny_gpt2), model_name="tiny-gpt2", temperature=0.0,
                                            max_prompt_tokens=48, max_tokens_limit=16, default_max_tokens=8,
                                            torch_threads=1)), free_port())
    yield srv
    srv.stop()


LM_TEXT = ("To be, or not to be, that is the question. Here is a conversation between a human and an assistant.\n"
           "Human: can you help me? Assistant: Sure, I can help. The answer is: (A) (B) (C) (D)\n") * 4


def test_endpoint_token_starts_equal_the_whole_text_tokenisation(served_gpt2, tiny_gpt2):
    from transformers import AutoTokenizer

    from evals.scorers import OpenAICompletions

    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2))
    want = [a for a, _ in tok(LM_TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    ep = OpenAICompletions(f"{served_gpt2.url}/v1")  # the model name from GET /v1/models
    assert len(want) > 3 * 48  # several pieces
    for per_request in (48, 10):  # pieces cut before whitespace join as the whole text does
        assert ep.token_starts(LM_TEXT, per_request) == want


@pytest.mark.parametrize("stride", [16, 47])
def test_lm_suite_through_the_server_matches_the_local_model(served_gpt2, tiny_gpt2, tmp_path, stride):
    """Tolerance 1e-4 relative on the total NLL: the server scores each window alone, the local path in padded
    batches (float noise only); the windows and token counts are equal exactly."""
    import evals

    path = tmp_path / "t.txt"
    path.write_text(LM_TEXT, encoding="utf-8")
    url = f"{served_gpt2.url}/v1"
    for local_kw, remote_kw in (({"add_bos": False}, {"add_bos": False}),  # the first token is context only
                                ({}, {"bos_text": "<|endoftext|>"})):  # BOS in front: every text token scored
        local = evals.run("lm", out=tmp_path / f"l{stride}{len(local_kw)}", model=str(tiny_gpt2), dataset=str(path),
                          stride=stride, max_length=47, **local_kw)
        remote = evals.run("lm", out=tmp_path / f"r{stride}{len(local_kw)}", model=url, dataset=str(path),
                           stride=stride, max_length=47, **remote_kw)
        lm_, rm_ = local.metrics, remote.metrics
        assert rm_["scorer"] == f"openai:tiny-gpt2@{url}" and rm_["retokenized_windows"] == 0
        assert rm_["tokens"] == lm_["tokens"] and rm_["first_token_scored"] == lm_["first_token_scored"]
        assert [(r["begin"], r["first_target"], r["end"]) for r in remote.per_example] == \
            [(r["begin"], r["first_target"], r["end"]) for r in local.per_example]
        assert len(remote.per_example) >= 5  # the 48-token limit forces several windows
        nll_l, nll_r = lm_["nll_per_token"] * lm_["tokens"], rm_["nll_per_token"] * rm_["tokens"]
        assert nll_r == pytest.approx(nll_l, rel=1e-4)
        assert rm_["bits_per_byte"] == pytest.approx(lm_["bits_per_byte"], rel=1e-4)


def test_lm_endpoint_context_errors(served_gpt2, tmp_path):
    import evals

    path = tmp_path / "t.txt"
    path.write_text(LM_TEXT, encoding="utf-8")
    url = f"{served_gpt2.url}/v1"
    with pytest.raises(ValueError, match="give --max-length"):  # wandao serve does not report max_model_len
        evals.run("lm", out=tmp_path / "a", model=url, dataset=str(path))
    with pytest.raises(ValueError, match=r"lower --max-length \(now 48\)"):  # 49-token requests > 48
        evals.run("lm", out=tmp_path / "b", model=url, dataset=str(path), max_length=48, stride=48)


def test_lm_through_the_server_with_split_characters(served_gpt2, tiny_gpt2, tmp_path):
    """Characters the byte-level BPE splits over several tokens (é, —, 東京): a window edge may fall inside one.
    Every token is still scored once (equal counts); at stride 47 every window is tokenised as the whole text
    (1e-4 relative, float noise); at stride 16 one window's text takes 49 tokens at the server and starts one
    token later (measured 2026-12-05: 1.0e-4 relative; bound 1e-3)."""
    import evals

    path = tmp_path / "t.txt"
    path.write_text("Shakespearean questioning conversations helped assistants answering humans; " * 6
                    + "naïve café — 東京 ok\n" * 3, encoding="utf-8")
    url = f"{served_gpt2.url}/v1"
    for stride, retokenized, rel in ((47, 0, 1e-4), (16, 1, 1e-3)):
        lm_ = evals.run("lm", out=tmp_path / f"l{stride}", model=str(tiny_gpt2), dataset=str(path), stride=stride,
                        max_length=47).metrics
        rm_ = evals.run("lm", out=tmp_path / f"r{stride}", model=url, dataset=str(path), stride=stride, max_length=47,
                        bos_text="<|endoftext|>").metrics
        assert rm_["tokens"] == lm_["tokens"] and rm_["retokenized_windows"] == retokenized
        assert rm_["nll_per_token"] * rm_["tokens"] == pytest.approx(lm_["nll_per_token"] * lm_["tokens"], rel=rel)
