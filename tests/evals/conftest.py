"""Fixtures for the evals tests: a hand-made BEIR folder with a TREC run, and a tiny local GPT-2."""

import json
from pathlib import Path

import pytest

QUERIES = {"q1": "eiffel tower height", "q2": "capital of france", "q3": "lyon food"}
QRELS = [("q1", "d1", 1), ("q2", "d2", 1), ("q2", "d4", 2), ("q3", "d3", 1)]
# q1's own id "q1" sits at rank 1 of its run: -removeQuery must drop it.
RUN_LINES = """q1 Q0 q1 1 9.0 fixture
q1 Q0 d1 2 8.0 fixture
q1 Q0 d2 3 1.0 fixture
q2 Q0 d4 1 5.0 fixture
q2 Q0 d1 2 4.0 fixture
q2 Q0 d2 3 3.0 fixture
q3 Q0 d1 1 2.0 fixture
q3 Q0 d2 2 1.5 fixture
"""
# a second system: q3 finds its document
RUN_B_LINES = RUN_LINES.replace("q3 Q0 d1 1 2.0", "q3 Q0 d3 1 2.0")


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    docs = {"d1": "The Eiffel Tower is 330 metres tall.", "d2": "Paris is the capital of France.",
            "d3": "Lyon is famous for its food.", "d4": "France's capital city is Paris.", "q1": "eiffel tower height, a document that shares the id of query q1"}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                                 for k, v in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join(f"{q}\t{d}\t{r}\n" for q, d, r in QRELS))
    (folder / "run-a.trec").write_text(RUN_LINES)
    (folder / "run-b.trec").write_text(RUN_B_LINES)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with random weights and a byte-level BPE tokenizer trained here (no downloads)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-gpt2")
    texts = ["The answer is: (A) (B) (C) (D)", "Here is a conversation between a human and an assistant.",
             "Human: can you help me? Assistant: Sure, I can help.", "To be, or not to be, that is the question."]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 10, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(out)
    return out
