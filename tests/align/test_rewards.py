"""align.rewards: Sparrow-style rules, the known-optimum reward, a learned RM, weighted composition."""

from __future__ import annotations

import pytest
import torch

from align.rewards import (AttributionRule, BlocklistRule, CompositeReward, LearnedRM, NotHumanRule, RewardSource,
                           TargetTokenReward, build_source, normalize_tokens)

EV = [{"id": "d1", "title": "Super Bowl 50", "text": "The Denver Broncos defeated the Carolina Panthers."},
      {"id": "d2", "title": "Paris", "text": "Paris is the capital of France."}]
IDS = ["d1", "d2"]


def _row(response: str, **kw) -> dict:
    return {"question": "q?", "response": response, "evidence": EV, "evidence_ids": IDS, **kw}


def test_attribution_rule_by_hand():
    rule = AttributionRule()
    rows = [_row("Denver Broncos defeated Carolina [1]"),  # span of the cited passage: 1
            _row("The Broncos beat Carolina [1]"),  # content words broncos, beat, carolina: 2 of 3 in d1
            _row("The Broncos beat Carolina [2]"),  # cites d2 (Paris): none of the 3 there
            _row("Paris is in France"),  # no citation: judged against all passages; paris, france: 2 of 2
            _row("it is the"),  # stopwords only, no span: 0
            _row("")]  # empty: 0
    assert rule(rows) == pytest.approx([1.0, 2 / 3, 0.0, 1.0, 0.0, 0.0])
    strict = AttributionRule(require_citation=True)
    assert strict([_row("Paris is in France"), _row("Paris is in France [2]")]) == [0.0, 1.0]


def test_not_human_rule():
    rows = [{"response": r} for r in ("I am a human, of course.", "I'm not an AI.", "As a person I enjoy tea.",
                                      "When I was a kid I liked it.", "I am an AI assistant without a body.",
                                      "Humans are mammals.", "My mother says hi.")]
    assert NotHumanRule()(rows) == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_blocklist_rule_whole_words_and_phrases(tmp_path):
    rule = BlocklistRule(["darn", "bad word"])
    rows = [{"response": r} for r in ("Darn it", "darned", "a BAD\nword", "badword", "fine")]
    assert rule(rows) == [0.0, 1.0, 0.0, 1.0, 1.0]
    f = tmp_path / "block.txt"
    f.write_text("# comment\nheck\n")
    src = build_source("blocklist", path=str(f), terms=["darn"])
    assert src.fn([{"response": "oh heck"}, {"response": "darn"}, {"response": "ok"}]) == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="at least one term"):
        BlocklistRule([" "])


def test_target_token_reward_and_composite():
    r = TargetTokenReward(5)
    assert r([{"response_ids": [5, 5, 5]}, {"response_ids": [5, 1]}, {"response_ids": []}]) == [1.0, 0.5, 0.0]
    comp = CompositeReward([RewardSource("t", r, 2.0), RewardSource("not_human", NotHumanRule(), -0.5)])
    total, parts = comp([{"response": "I am a person", "response_ids": [5, 1]}, {"response": "ok", "response_ids": [1]}])
    # row 0: 2·0.5 − 0.5·0 = 1.0; row 1: 2·0 − 0.5·1 = −0.5
    assert total == pytest.approx([1.0, -0.5])
    assert parts == {"t": [0.5, 0.0], "not_human": [0.0, 1.0]}
    with pytest.raises(ValueError, match="unique"):
        CompositeReward([RewardSource("a", r), RewardSource("a", r)])


def test_normalize_tokens():
    assert normalize_tokens("The cat's hat, an apple!") == ["cats", "hat", "apple"]


def test_learned_rm_source_scores_like_align_reward(tmp_path):
    """A tiny (random) BERT RM folder: the source returns align.reward.score's numbers, row by row."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from align.reward import minilm_path, score

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(str(tmp_path))
    rows = [_row("Denver won [1]"), _row("Paris")]
    got = LearnedRM(tmp_path)(rows)
    want = score(str(tmp_path), [{"prompt": "q?", "response": r["response"], "evidence": EV} for r in rows])
    assert got == pytest.approx([float(v) for v in want])
    assert got[0] != pytest.approx(got[1])
    with pytest.raises(FileNotFoundError, match="no RM folder"):
        LearnedRM(tmp_path / "missing")
