"""Streaming moderation: normalisation, the blocklist, zero leaks for every split of the stream, the cap."""

import random

import pytest

from rag.serve.moderation import Moderation, ModerationConfigError
from rag.serve.normalize import fold, normalize

ENTITIES = [{"id": "p1", "category": "person", "terms": ["Voldemort", "Tom Riddle", "伏地魔"]},
            {"id": "b1", "category": "copyright", "terms": ["Coldplay", "酷玩乐队"]},
            {"id": "w1", "terms": ["ass"]}]  # short: whole words only


def make(**kw) -> Moderation:
    return Moderation.from_dict({"entities": ENTITIES, **kw})


@pytest.mark.parametrize("text,folded", [
    ("Voldemort", "voldemort"),                      # case
    ("ＶＯＬＤＥＭＯＲＴ", "voldemort"),              # full width
    ("Vol\u200bde\u200dmo\ufeffrt", "voldemort"),    # zero-width space, joiner, BOM
    ("Vоldеmоrt", "voldemort"),                      # Cyrillic о and е
    ("VΟLDΕΜΟRΤ", "voldemort"),                      # Greek capitals
    ("V o l d e m o r t", "voldemort"),              # spaces between characters
    ("V.o-l_d/e*m'o,r!t", "voldemort"),              # punctuation between characters
    ("Vòldemört", "voldemort"),                      # accents
    ("𝐕𝐨𝐥𝐝𝐞𝐦𝐨𝐫𝐭", "voldemort"),                      # mathematical bold
    ("ⓥⓞⓛⓓⓔⓜⓞⓡⓣ", "voldemort"),                      # circled
    ("伏 地，魔", "伏地魔"),                          # Chinese with a space and a full-width comma
    ("酷玩樂隊", "酷玩樂隊"),                        # traditional stays traditional (aliases cover it)
])
def test_fold(text, folded):
    assert fold(text) == folded


def test_normalize_keeps_original_offsets():
    n = normalize("x V\u200bo")
    # row: folded char -> original index
    assert n.folded == "xvo" and n.index == [0, 2, 4]


@pytest.mark.parametrize("text,entity", [
    ("Who wrote it? V.o.l.d.e.m.o.r.t did.", "p1"),
    ("TOM  riddle", "p1"),
    ("the ＣｏｌｄＰｌａｙ song", "b1"),
    ("是伏\u200b地魔写的", "p1"),
    ("an ass.", "w1"),
    ("Voldemorts", "p1"),                            # long terms match inside words too
    ("a class act", None),                           # short term inside a word: no match
    ("The cold play of the river", None),            # letters match, but "coldplay" needs all of them: it has them!
])
def test_check_text(text, entity):
    ev = make().check_text(text)
    if text.startswith("The cold play"):
        # documented consequence of dropping spaces: "cold play" folds to "coldplay" and is blocked
        assert ev is not None and ev.entity == "b1"
        return
    assert (ev.entity if ev else None) == entity
    if ev:
        assert ev.to_dict() == {"type": "moderation", "stage": "input", "rule": "blocklist", "action": "refuse",
                                "entity": entity, "category": ev.category}


def _splits(text: str, rng: random.Random):
    yield "one-char", list(text)
    yield "whole", [text]
    for burst in (2, 3, 7, 16, 40):
        yield f"burst{burst}", [text[i:i + burst] for i in range(0, len(text), burst)]
    for r in range(5):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
        yield f"random{r}", [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


OBFUSCATIONS = [lambda t: t, str.upper, lambda t: " ".join(t), lambda t: "\u200b".join(t),
                lambda t: t.replace("o", "о").replace("e", "е"),  # Cyrillic
                lambda t: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t),  # full width
                lambda t: "-".join(t)]


def _stream(mod: Moderation, pieces):
    s = mod.stream()
    out = []
    for p in pieces:
        r = s.feed(p)
        out.append(r.text)
        if r.stopped:
            return s, "".join(out)
    out.append(s.finish().text)
    return s, "".join(out)


@pytest.mark.parametrize("action", ["stop", "redact"])
def test_zero_leaks_for_every_split(action):
    mod = make(action=action)
    rng = random.Random(0)
    carriers = ["Who wrote the song Clocks? The song was written by {}, in 2002.",
                "{}", "Answer: {}", "伏地魔之后是{}。", "I think {} is the answer, said the bot."]
    n = 0
    for term in ["Voldemort", "Tom Riddle", "Coldplay", "伏地魔"]:
        for ob in OBFUSCATIONS:
            for carrier in carriers:
                text = carrier.format(ob(term))
                for name, pieces in _splits(text, rng):
                    s, released = _stream(mod, pieces)
                    n += 1
                    # no blocked term in what the client saw, under the full normalisation
                    assert mod.check_text(released) is None, (term, name, released)
                    assert s.events, (text, name)
                    if action == "stop":
                        assert s.stopped and text.startswith(released)
                        first = min(text.find(x) for x in [ob(term)] if text.find(x) >= 0)
                        first = min(first, text.find("伏地魔")) if "伏地魔" in text else first
                        assert len(released) <= first  # not even the first character of the term
                    else:
                        assert "[redacted]" in released
                    assert s.held_max <= mod.cfg.hold_tokens
    assert n > 1000


def test_benign_text_passes_unchanged_in_any_split():
    mod = make()
    rng = random.Random(1)
    text = ("Super Bowl 50 was an American football game. The Broncos defeated the Panthers, 24–10, "
            "to earn their third title. 比赛在加州举行。 Volunteers and a class of students helped; Tom rid the "
            "field of snow.")
    for name, pieces in _splits(text, rng):
        s, released = _stream(mod, pieces)
        assert released == text and not s.events and not s.stopped, name


def test_holdback_never_exceeds_the_cap_and_fails_closed():
    mod = make(hold_tokens=8)
    # a pending prefix "vold" kept alive by separator-only tokens
    pieces = ["Hi ", "V", "o", "l", "d"] + [" "] * 10 + ["x"]
    s = mod.stream()
    released = "".join(s.feed(p).text for p in pieces)
    assert s.held_max <= 8
    assert released == "Hi " and s.stopped and s.events[0].rule == "holdback"
    # benign text holds nothing beyond a short pending prefix
    s = mod.stream()
    for p in "The voltage was low.".split(" "):
        s.feed(p + " ")
    assert s.held_max <= 2


def test_redact_keeps_the_rest():
    s, released = _stream(make(action="redact"), ["Ask V", "oldem", "ort or Cold", "play now."])
    assert released == "Ask [redacted] or [redacted] now."
    assert [e.entity for e in s.events] == ["p1", "b1"]


def test_whole_word_waits_for_the_next_character():
    s = make().stream()
    assert s.feed("an ").text == "an "
    assert s.feed("ass").text == ""          # "ass" might become "assistant"
    r = s.feed("istant")
    assert r.text == "assistan" and not s.events  # "t" could start "Tom Riddle"
    assert s.finish().text == "t"


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ModerationConfigError, match=r"entities\[0\].terms"):
        Moderation.from_dict({"entities": [{"id": "x", "terms": "Voldemort"}]}, "m.yaml")
    with pytest.raises(ModerationConfigError, match="action must be"):
        Moderation.from_dict({"action": "warn"})
    with pytest.raises(ModerationConfigError, match="unknown field"):
        Moderation.from_dict({"hold": 3}, "m.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("entities: [\n")
    with pytest.raises(ModerationConfigError, match="bad.yaml: not valid YAML"):
        Moderation.from_yaml(path)


def test_shipped_config_loads():
    from pathlib import Path

    mod = Moderation.from_yaml(Path(__file__).resolve().parents[3] / "configs" / "serve" / "moderation.yaml")
    assert mod.cfg.hold_tokens <= 32 and len(mod.blocklist) >= 6
    assert mod.check_text("Who sang Clocks? C-o-l-d-p-l-a-y").entity == "band-coldplay"


@pytest.mark.parametrize("action", ["stop", "redact"])
def test_short_term_inside_a_longer_pending_term(action):
    """'R e m' (the band R.E.M., a whole word) completes inside the spaced-out 'Erich Maria Remarque':
    nothing of the longer term may be released before the stop/redaction."""
    mod = Moderation.from_dict({"action": action, "hold_tokens": 64, "entities": [
        {"id": "rem", "terms": ["R.E.M."]}, {"id": "author", "terms": ["Erich Maria Remarque"]}]})
    text = "Write a E r i c h   M a r i a   R e m a r q u e manual"
    s, released = _stream(mod, list(text))
    if action == "stop":
        assert released == "Write a "
    else:
        assert released == "Write a [redacted] manual" and [e.entity for e in s.events] == ["author"]
