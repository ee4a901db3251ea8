"""align.rewards: Sparrow-style rules, the known-optimum reward, a learned RM, weighted composition."""

from __future__ import annotations

import pytest
import torch

from align.rewards import (AttributionRule, BlocklistRule, CompositeReward, LearnedRM, NotHumanRule, RewardSource,
                           TargetTokenReward, build_source, normalize_tokens)

EV = [{"id": "d1", "title": "Super Bowl 50",
       "text": "The Denver Broncos defeated the Carolina Panthers 24 to 10 in Super Bowl 50 at Levi's Stadium in "
               "Santa Clara."},  # 18 normalised tokens: denver broncos defeated carolina panthers 24 to 10 in ...
      {"id": "d2", "title": "Paris", "text": "Paris is the capital of France."}]
IDS = ["d1", "d2"]
# the grounded run's case: a passage holding the token "1", so the fragment "1]" normalises to a span of it
EV_SKY = [{"id": "s1", "title": "Sky", "text": "BSkyB broadcasts channel 1 in DVB-compliant MPEG-2."},
          {"id": "s2", "title": "Sky+ HD", "text": "Sky+ HD material is broadcast using MPEG-4."}]


def _row(response: str, **kw) -> dict:
    return {"question": "q?", "response": response, "evidence": EV, "evidence_ids": IDS, **kw}


def test_attribution_rule_is_alce_citation_f1_by_hand():
    rule = AttributionRule()
    rows = [_row("Denver Broncos defeated Carolina [1]"),  # a span of cited d1: recall 1, precision 1 -> F1 1
            _row("The Broncos beat Carolina [1]"),  # broncos, beat, carolina: 2 of 3 < 0.75 in d1: unsupported: 0
            _row("The Broncos beat Carolina [2]"),  # cites d2 (Paris): none of the 3 there: 0
            _row("Paris is in France"),  # cites nothing: unsupported, as in ALCE: 0
            _row("Paris is the capital of France [2]."),  # span of d2: 1
            _row("Paris is the capital of France [1]."),  # wrong passage: 0
            # both sentences supported by their one citation: recall 1, precision 2/2: 1
            _row("The Broncos defeated Carolina [1]. Paris is the capital of France [2]."),
            # recall 1/2 (Lyon is not in d2), precision 1 of 2 citations relevant: F1 = 2·½·½ / 1 = 1/2
            _row("The Broncos defeated Carolina [1]. Lyon is big [2]."),
            # recall 1/2 (the second sentence cites nothing), precision 1/1: F1 = 2·½·1 / 1.5 = 2/3
            _row("The Broncos defeated Carolina [1]. Paris is the capital of France."),
            _row("24 to 10 [1]")]  # numerals 24 and 10 are not marker numbers (2 passages): span of d1: 1
    assert rule(rows) == pytest.approx([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.5, 2 / 3, 1.0])
    d = rule.details("The Broncos defeated Carolina [1]. Lyon is big [2].", EV, IDS)
    assert (d["recall"], d["precision"], d["reason"]) == (0.5, 0.5, None)
    # require_citation off: an answer without any marker is judged against every passage, recall only
    lenient = AttributionRule(require_citation=False)
    assert lenient([_row("Paris is in France"), _row("Paris is in Lyon"), _row("Paris is in France [2]")]) == \
        pytest.approx([1.0, 0.0, 1.0])  # paris, france: 2/2; paris, lyon: 1/2; cited as usual


def test_attribution_rule_cannot_be_gamed():
    rule = AttributionRule()
    sky = [{"response": r, "evidence": EV_SKY, "evidence_ids": ["s1", "s2"]} for r in (
        "1]",  # the grounded run's collapse (bench/out/ppo-grounded-notes.txt): a malformed marker: 0
        "1",  # citation debris, no marker: 0 (the old rule scored it 1: "1" is a span of s1)
        "[1",  # malformed: 0
        "1]1]", "[1]1]", "1 1 1", "111 1 [1]", "12 [2]",  # malformed or debris (marker numbers run together): 0
        "DVB-compliant MPEG-2 [1].",  # a real answer: span of s1: 1
        "MPEG-4 [2]")]  # a real answer: span of s2 (mpeg4): 1
    assert rule(sky) == [0.0] * 8 + [1.0, 1.0]
    assert [rule.details(r["response"], EV_SKY, ["s1", "s2"])["reason"] for r in sky[:3]] == [
        "malformed citation marker", "citation debris", "malformed citation marker"]
    rows = [_row("[1]"), _row("[1][2]"), _row(" [2]. "), _row("The [1]."),  # bare citations, stopwords only: 0
            _row(""),  # empty: 0
            _row("Paris is the capital of France [3]."), _row("Paris [0]"),  # out of range (2 passages shown): 0
            _row("Paris is the capital of France [1, 2]."), _row("Paris [2]]"),  # malformed markers: 0
            _row("2 [1]")]  # a one-digit numeral that is a marker number: debris (documented trade-off): 0
    assert rule(rows) == [0.0] * 10
    # citing every passage: recall 1, but d1 is irrelevant (alone it fails, d2 still supports): precision 1/2,
    # F1 2/3 < 1 for the right citation alone
    every, right = rule([_row("Paris is the capital of France [1][2]."), _row("Paris is the capital of France [2].")])
    assert every == pytest.approx(2 / 3) and right == 1.0
    # repeating the passage: a verbatim run of 12 normalised tokens or more restates the evidence: 0;
    # 11 tokens (denver ... super bowl) is a quote that answers: 1; max_copy_tokens 0 switches the check off
    whole = "The Denver Broncos defeated the Carolina Panthers 24 to 10 in Super Bowl 50 at Levi's Stadium in Santa Clara [1]."
    twelve = "The Denver Broncos defeated the Carolina Panthers 24 to 10 in Super Bowl 50 [1]."
    eleven = "The Denver Broncos defeated the Carolina Panthers 24 to 10 in Super Bowl [1]."
    assert rule([_row(whole), _row(twelve), _row(eleven)]) == [0.0, 0.0, 1.0]
    assert rule.details(whole, EV, IDS)["reason"] == "copies a passage"
    assert AttributionRule(max_copy_tokens=0)([_row(whole)]) == [1.0]


def test_attribution_penalty_from_the_config():
    from align.ppo import RewardSpec

    rule = AttributionRule(malformed_penalty=0.5)
    # malformed, debris, bare, out of range, copied: -0.5; well-formed but unsupported: 0; supported: 1
    got = rule([_row("1]"), _row("1"), _row("[1]"), _row("Paris [3]"), _row("The Denver Broncos defeated the Carolina "
                "Panthers 24 to 10 in Super Bowl 50 [1]."), _row("Paris is the capital of France [1]."), _row("Paris [2]")])
    assert got == [-0.5] * 5 + [0.0, 1.0]
    spec = RewardSpec(kind="attribution", malformed_penalty=0.25)
    assert spec.require_citation is True
    src = build_source(spec.kind, spec.name, spec.weight, require_citation=spec.require_citation,
                       malformed_penalty=spec.malformed_penalty)
    assert src.fn([_row("1]"), _row("Paris [2]")]) == [-0.25, 1.0]
    with pytest.raises(ValueError, match="malformed_penalty"):
        AttributionRule(malformed_penalty=-1.0)


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
