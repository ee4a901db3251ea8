"""Reward models end to end on tiny, locally built backbones: train, save, reload in transformers, eval, score."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from align.losses import pairwise_loss
from align.preference_data import read_preferences, split_by_prompt
from align.reward import (RewardModel, RMConfig, build_reward_model, encode, evaluate, load_reward_model,
                          minilm_path, preference_metrics, render_prompts, row_rewards, run, score, special_wrap)
from pretrain.config import config_command, load_config

REPO = Path(__file__).resolve().parents[2]


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's WordPiece tokenizer, saved as an HF folder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(str(out))
    _tokenizer().save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> str:
    """A randomly initialised 2-layer GPT-2 (a causal LM: its head reads the last non-pad token)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(str(out))
    _tokenizer().save_pretrained(str(out))
    return str(out)


def test_encode_cuts_the_prompt_from_the_left_and_keeps_the_response():
    tok = _tokenizer()
    prefix, suffix = special_wrap(tok)
    assert tok.convert_ids_to_tokens(prefix + suffix) == ["[CLS]", "[SEP]"]
    prompt = "one two three four five six seven eight"  # 8 word pieces
    [ids] = encode(tok, [prompt], ["nine ten"], max_length=6, min_prompt_tokens=1)
    # budget 6 - 2 specials = 4: the response (2) survives, the prompt keeps its last 2 pieces
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "seven", "eight", "nine", "ten", "[SEP]"]
    # a response longer than the budget is cut from the right, leaving min_prompt_tokens of prompt
    [ids] = encode(tok, [prompt], ["a b c d e f"], max_length=8, min_prompt_tokens=2)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "seven", "eight", "a", "b", "c", "d", "[SEP]"]
    # short inputs are untouched
    [ids] = encode(tok, ["hi"], ["yo"], max_length=64, min_prompt_tokens=8)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "hi", "yo", "[SEP]"]


def test_rm_input_is_the_sft_template_prompt_plus_response():
    rows = read_preferences("hh-rlhf:helpful-base", limit=1)
    prompt = render_prompts(rows, "sparrow")[0]
    assert prompt.startswith("User: ") and prompt.endswith("\nAssistant: ")
    assert rows[0].question in prompt


def _cfg(backbone: str, out: Path, **train) -> RMConfig:
    return RMConfig.from_dict({
        "model": {"backbone": backbone},
        "data": {"train": ["hh-rlhf:helpful-base"], "eval": ["hh-rlhf:helpful-base"], "train_split": "train",
                 "eval_split": "train", "limit": 16, "eval_limit": 16, "max_length": 64, "min_prompt_tokens": 16},
        # the L2 term is what moves the head's bias: the ranking loss is shift-invariant, its bias gradient is 0
        "loss": {"l2": 0.01},
        "optim": {"lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"kind": "constant", "warmup_iters": 0},
        "train": {"max_steps": 40, "batch_size": 8, "log_interval": 10, "reference_rows": 16, "num_threads": 1,
                  **train},
        "out": str(out),
    })


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "tiny-rm"
    cfg = _cfg(tiny_bert, out)
    summary = run(cfg)
    return cfg, summary, out


def test_tiny_rm_run_lowers_the_loss_beats_chance_and_changes_every_head_parameter(trained, tiny_bert):
    cfg, summary, out = trained
    rows = split_by_prompt(read_preferences("hh-rlhf:helpful-base"), "train")[:16]
    fresh = build_reward_model(cfg.model, cfg.train.seed)
    fresh.meta.update({"max_length": 64, "min_prompt_tokens": 16, "template": "sparrow"})
    trained_rm = load_reward_model(out)

    def slice_loss(rm):
        r = row_rewards(rm, rows)
        return float(pairwise_loss(torch.tensor([x[0] for x in r]), torch.tensor([x[1] for x in r])))

    before, after = slice_loss(fresh), slice_loss(trained_rm)
    assert after < before - 0.1, (before, after)
    m = preference_metrics(row_rewards(trained_rm, rows), rows)
    assert m["accuracy"] >= 0.75, m  # 16 training pairs: chance is 0.5
    assert summary["eval"]["hh-rlhf:helpful-base"]["pairs"] == 16
    head = {n: p for n, p in fresh.model.named_parameters() if n.startswith(("classifier", "bert.pooler"))}
    new = dict(trained_rm.model.named_parameters())
    assert len(head) == 4
    for name, p in head.items():
        assert not torch.equal(p, new[name]), f"{name} did not change"


def test_saved_folder_reloads_in_transformers_with_equal_rewards(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, summary, out = trained
    files = {p.name for p in Path(out).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "rm_config.yaml", "metrics.jsonl", "eval.json",
            "summary.md"} <= files
    named = re.findall(r"`([^`]+)`", (Path(out) / "summary.md").read_text().split("Files:", 1)[1])
    assert named and set(named) <= files  # summary.md lists what the folder holds, nothing else
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert type(hf).__name__ == "BertForSequenceClassification" and hf.config.num_labels == 1
    meta = hf.config.wandao_rm
    assert meta["reward_offset"] == pytest.approx(summary["reward_offset"]) and meta["template"] == "sparrow@1"
    items = [("How do I boil an egg?", "Simmer it for nine minutes."), ("Hi", "Go away.")]
    ours = score(out, items)
    texts = [f"User: {p}\nAssistant: {r}" for p, r in items]  # the sparrow prompt part plus the response
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**enc).logits[:, 0].double().numpy() - meta["reward_offset"]
    assert ours == pytest.approx(theirs, abs=1e-5)
    # normalised: mean 0 over the reference rows' responses
    ref = split_by_prompt(read_preferences("hh-rlhf:helpful-base"), "train")[:16]
    rew = torch.tensor([x for r in row_rewards(load_reward_model(out), ref) for x in r])
    assert float(rew.mean()) == pytest.approx(0.0, abs=1e-5)


def test_causal_backbone_reads_the_last_non_pad_token(tiny_gpt2, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm = build_reward_model(RMConfig.from_dict({"model": {"backbone": tiny_gpt2}}).model)
    assert rm.meta["pooling"] == "last" and type(rm.model).__name__ == "GPT2ForSequenceClassification"
    rm.meta.update({"max_length": 64, "min_prompt_tokens": 16, "template": "sparrow"})
    rm.model.save_pretrained(str(tmp_path))
    rm.tokenizer.save_pretrained(str(tmp_path))
    reloaded = RewardModel(AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval(), rm.tokenizer,
                           rm.meta)
    items = [("short", "yes"), ("a much longer prompt with many more words in it", "and a long answer too")]
    alone = [float(score(reloaded, [it])[0]) for it in items]
    batched = score(reloaded, items)  # the short item is right-padded here: its reward must not move
    assert batched == pytest.approx(alone, abs=1e-5)
    assert score(rm, items) == pytest.approx(batched, abs=1e-5)


def test_eval_cli_accepts_an_hh_rlhf_path_and_ends_with_json(trained, data_dir, tmp_path, capsys):
    from wandao.cli import main as wandao_main

    _, _, out = trained
    path = data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    # a 10-row copy keeps the test quick; the file is read exactly like the original
    import gzip

    with gzip.open(path, "rt") as f, gzip.open(tmp_path / "test.jsonl.gz", "wt") as g:
        for _ in range(10):
            g.write(f.readline())
    assert wandao_main(["rm", "eval", "--model", str(out), "--data", str(tmp_path / "test.jsonl.gz"), "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"accuracy", "ties", "pairs", "ece"} <= set(last) and last["pairs"] == 10
    direct = evaluate(out, tmp_path / "test.jsonl.gz")
    assert last["accuracy"] == pytest.approx(direct["accuracy"]) and last["ece"] == pytest.approx(direct["ece"])
    # a missing file is a clear error (exit 2)
    assert wandao_main(["rm", "eval", "--model", str(out), "--data", str(tmp_path / "nope.jsonl.gz"), "--json"]) == 2
    assert "nope.jsonl.gz" in capsys.readouterr().err


def test_score_cli_and_bad_rows(trained, tmp_path):
    from align.reward import score_main

    _, _, out = trained
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n"
                    + json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Bye"}) + "\n")
    assert score_main(["--model", str(out), "--data", str(data), "--out", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert isinstance(rows[0]["reward"], float) and len(rows[1]["rewards"]) == 2
    assert rows[0]["reward"] == pytest.approx(rows[1]["rewards"][0], abs=1e-6)  # same prompt and response
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "response": "ok"}) + "\n" + json.dumps({"prompt": "Hi"}) + "\n")
    assert score_main(["--model", str(out), "--data", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_rm_configs_load():
    for path in sorted((REPO / "configs" / "rm").glob("*.yaml")):
        command, named = config_command(path)
        assert command == "rm train" and (REPO / named).resolve() == path.resolve()
        assert load_config(RMConfig, path).data.template == "sparrow"


def test_mean_pooling_head_averages_unpadded_states_and_reloads_in_transformers(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "mean-rm"
    cfg = _cfg(tiny_bert, out, max_steps=2)
    cfg.model.pooling = "mean"
    run(cfg)
    rm = load_reward_model(out)
    assert type(rm.model).__name__ == "BertMeanPoolingForSequenceClassification" and rm.meta["pooling"] == "mean"
    assert not any(n.startswith("bert.pooler") for n, _ in rm.model.named_parameters())  # no [CLS] pooler
    items = [("short", "yes"), ("a much longer prompt with many more words in it", "and a long answer too")]
    ours = score(rm, items)
    # by hand: the mean of the last hidden states over the real tokens of each sequence, then the linear head
    seqs, _ = _row_sequences_of(rm, items)
    expected = []
    with torch.no_grad():
        for seq in seqs:
            hidden = rm.model.bert(input_ids=torch.tensor([seq])).last_hidden_state[0]  # (T, H), no padding
            expected.append(float(rm.model.classifier(hidden.mean(dim=0))[0]) - rm.offset)
    assert ours == pytest.approx(expected, abs=1e-5)
    assert [float(score(rm, [it])[0]) for it in items] == pytest.approx(list(ours), abs=1e-5)  # padding excluded
    # the folder carries the head's code: plain transformers loads it (trust_remote_code) with equal logits
    assert (out / "rm_heads.py").exists()
    hf = AutoModelForSequenceClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    from align.reward import _pad

    ids, mask = _pad(seqs, rm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits[:, 0].double().numpy() - rm.offset
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_mean_pooling_rejects_a_causal_backbone(tiny_gpt2):
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError, match="model.pooling"):
        build_reward_model(RMConfig.from_dict({"model": {"backbone": tiny_gpt2, "pooling": "mean"}}).model)


def _row_sequences_of(rm, items):
    from align.preference_data import PreferenceRow
    from align.reward import _row_sequences

    return _row_sequences(rm, [PreferenceRow(str(n), p, [r], [0]) for n, (p, r) in enumerate(items)])


def test_train_weights_repeat_and_subsample_a_source():
    from align.preference_data import PreferenceRow
    from align.reward import weight_rows
    from pretrain.config import ConfigError

    rows = [PreferenceRow(str(i), f"q{i}", ["a", "b"], [0, 1]) for i in range(4)]
    ids = [r.id for r in weight_rows(rows, 2.5, seed=0)]
    assert len(ids) == 10 and all(ids.count(str(i)) in (2, 3) for i in range(4))  # every row twice, 2 a third time
    assert sum(ids.count(str(i)) == 3 for i in range(4)) == 2
    assert ids == [r.id for r in weight_rows(rows, 2.5, seed=0)]  # fixed by the seed
    assert len(weight_rows(rows, 0.5, seed=0)) == 2 and weight_rows(rows, 1.0, seed=0) == rows
    with pytest.raises(ConfigError, match="train_weights"):
        RMConfig.from_dict({"data": {"train": ["hh-rlhf:helpful-base"], "train_weights": {"hh-rlhf:harmless-base": 2.0}}})
    with pytest.raises(ConfigError, match="train_weights"):
        RMConfig.from_dict({"data": {"train": ["hh-rlhf:helpful-base"], "train_weights": {"hh-rlhf:helpful-base": 0.0}}})


# ------------------------------------------------------------------------------ objective heads

HELPFUL, HARMLESS = "hh-rlhf:helpful-base", "hh-rlhf:harmless-base"


@pytest.fixture(scope="module")
def two_heads(tiny_bert, tmp_path_factory):
    """A tiny RM with a helpful head (trained on 16 helpful-base rows) and a harmless head (16 harmless-base rows)."""
    out = tmp_path_factory.mktemp("rm") / "tiny-heads"
    cfg = _cfg(tiny_bert, out)
    cfg = RMConfig.from_dict({**cfg.to_dict(), "model": {"backbone": tiny_bert, "heads": ["helpful", "harmless"]},
                              "data": {**cfg.to_dict()["data"], "train": [HELPFUL, HARMLESS], "eval": [HELPFUL, HARMLESS],
                                       "source_heads": {HELPFUL: "helpful", HARMLESS: "harmless"}}})
    summary = run(cfg)
    return cfg, summary, out


def _train_rows(source: str) -> list:
    return split_by_prompt(read_preferences(source), "train")[:16]


def test_two_head_rm_trains_each_head_on_its_own_rows_and_saves_both(two_heads):
    from transformers import AutoModelForSequenceClassification

    _, summary, out = two_heads
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.num_labels == 2 and hf.config.id2label == {0: "helpful", 1: "harmless"}
    meta = hf.config.wandao_rm
    assert meta["heads"] == ["helpful", "harmless"]
    assert meta["source_heads"] == {HELPFUL: "helpful", HARMLESS: "harmless"}
    assert meta["reward_offsets"] == pytest.approx(summary["reward_offsets"])
    assert meta["reward_offset"] == pytest.approx(meta["reward_offsets"]["helpful"])
    assert summary["eval"][HELPFUL]["head"] == "helpful" and summary["eval"][HARMLESS]["head"] == "harmless"
    rm = load_reward_model(out)
    for head, source in (("helpful", HELPFUL), ("harmless", HARMLESS)):
        rows = _train_rows(source)
        reader = rm.with_head(head)
        rewards = row_rewards(reader, rows)
        # normalised per head: mean 0 over that head's reference rows (all 16 of its source here)
        assert float(np.concatenate(rewards).mean()) == pytest.approx(0.0, abs=1e-5)
        assert preference_metrics(rewards, rows)["accuracy"] >= 0.75  # 16 training pairs: chance is 0.5
    # column h of plain transformers' logits, minus head h's offset
    items = [("How do I boil an egg?", "Simmer it for nine minutes."), ("Hi", "Go away.")]
    enc = rm.tokenizer([f"User: {p}\nAssistant: {r}" for p, r in items], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**enc).logits.double().numpy()
    for h, head in enumerate(("helpful", "harmless")):
        want = logits[:, h] - meta["reward_offsets"][head]
        assert score(out, items, head=head) == pytest.approx(want, abs=1e-5)
        assert score(out, items, head=h) == pytest.approx(want, abs=1e-5)


def test_a_row_trains_only_its_own_head():
    """The loss of rows on head 1 gives head 0's output weights exactly zero gradient (and head 1's not)."""
    from align.reward import LossSection, _Batches, batch_loss
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    data = _Batches(seqs=[[[1, 5, 6, 2], [1, 7, 2]], [[1, 8, 9, 2], [1, 10, 11, 12, 2]]], ranks=[[0, 1], [0, 1]],
                    margins=[{}, {}], pairs=[1, 1], targets=[{}, {}], heads=[1, 1])
    loss, rewards, _, _ = batch_loss(model, data, [0, 1], LossSection(), pad_id=0, device="cpu")
    loss.backward()
    grad = model.classifier.weight.grad
    assert torch.count_nonzero(grad[0]) == 0 and torch.count_nonzero(grad[1]) > 0
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 6, 2]])
        assert float(rewards[0, 0]) == pytest.approx(float(model(input_ids=ids).logits[0, 1]), abs=1e-5)


def test_head_config_errors_name_the_field():
    from pretrain.config import ConfigError

    base = {"model": {"heads": ["helpful", "harmless"]},
            "data": {"train": [HELPFUL, HARMLESS], "eval": [HELPFUL],
                     "source_heads": {HELPFUL: "helpful", HARMLESS: "harmless"}}}
    assert RMConfig.from_dict(base).model.heads == ["helpful", "harmless"]

    def broken(**data):
        return {"model": base["model"], "data": {**base["data"], **data}}

    with pytest.raises(ConfigError, match="source_heads.*have no head"):
        RMConfig.from_dict(broken(source_heads={HELPFUL: "helpful"}))
    with pytest.raises(ConfigError, match="'honest' is not one of model.heads"):
        RMConfig.from_dict(broken(source_heads={HELPFUL: "helpful", HARMLESS: "honest"}))
    with pytest.raises(ConfigError, match=r"model.heads.*\['harmless'\] get no training source"):
        RMConfig.from_dict(broken(train=[HELPFUL], source_heads={HELPFUL: "helpful", HARMLESS: "harmless"}))
    with pytest.raises(ConfigError, match="source_heads.*needs model.heads"):
        RMConfig.from_dict({"data": {"source_heads": {HELPFUL: "helpful"}}})
    with pytest.raises(ConfigError, match="model.heads.*distinct"):
        RMConfig.from_dict({"model": {"heads": ["a", "a"]}})


def test_a_multi_head_rm_reads_the_head_it_is_told_or_the_one_trained_on_the_data(two_heads, trained, data_dir,
                                                                                   tmp_path, capsys):
    from align.rewards import LearnedRM, build_source
    from align.reward import score_main

    _, _, out = two_heads
    items = [("How do I boil an egg?", "Simmer it for nine minutes.")]
    with pytest.raises(ValueError, match="has heads helpful, harmless: name the one"):
        score(out, items)
    with pytest.raises(ValueError, match="unknown head 'honest'"):
        score(out, items, head="honest")
    with pytest.raises(ValueError, match="one scalar head, no head named 'helpful'"):
        score(trained[2], items, head="helpful")
    # evaluate: the source's own head, by registered name or by a path to the same file
    by_name = evaluate(out, HARMLESS, split="train")
    by_path = evaluate(out, data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", split="train")
    told = evaluate(out, HARMLESS, split="train", head="harmless")
    other = evaluate(out, HARMLESS, split="train", head="helpful")
    assert by_name["head"] == by_path["head"] == told["head"] == "harmless" and other["head"] == "helpful"
    assert by_name["accuracy"] == by_path["accuracy"] == told["accuracy"]
    assert by_name["mean_margin"] != pytest.approx(other["mean_margin"])
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Bye"}) + "\n")
    with pytest.raises(ValueError, match="no head of this RM was trained on it"):
        evaluate(out, prefs)
    assert evaluate(out, prefs, head="helpful")["pairs"] == 1
    # rm score: --head required, checked before scoring; the reward is that head's
    single = tmp_path / "in.jsonl"
    single.write_text(json.dumps({"prompt": items[0][0], "response": items[0][1]}) + "\n")
    assert score_main(["--model", str(out), "--data", str(single), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "pass --head" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()
    assert score_main(["--model", str(out), "--data", str(single), "--out", str(tmp_path / "o.jsonl"),
                       "--head", "harmless"]) == 0
    got = json.loads((tmp_path / "o.jsonl").read_text())["reward"]
    assert got == pytest.approx(float(score(out, items, head="harmless")[0]), abs=1e-6)
    # PPO's learned reward: a head, checked when the reward is built
    with pytest.raises(ValueError, match="give the reward a head"):
        LearnedRM(out)
    rows = [{"question": items[0][0], "response": items[0][1]}]
    assert LearnedRM(out, head="helpful")(rows) == pytest.approx(list(score(out, items, head="helpful")), abs=1e-6)
    assert build_source("rm", path=str(out), head="harmless").fn(rows) == pytest.approx([got], abs=1e-6)
    with pytest.raises(ValueError, match="is for kind rm"):
        build_source("not_human", head="harmless")
