"""Streaming moderation with zero leaks by construction.

A :class:`StreamModerator` sits between the decoder and the client. Every text piece (one token's
text) goes into a hold-back buffer; text leaves the buffer only when no blocked term can still
cover it:

- **Blocklist** (:class:`Blocklist`): entities, each with aliases in any script, matched on the
  folded text of :mod:`rag.serve.normalize` (case, width, zero-width characters, accents,
  homoglyphs, and spaces or punctuation inserted between characters are all undone). Matching is
  an Aho–Corasick automaton over the folded characters (Aho & Corasick 1975, "Efficient string
  matching"). After each piece the automaton's state gives the longest folded suffix that is still
  a *prefix* of some term; the buffer is released only up to the original character where that
  suffix starts. So the first character of any later match is still in the buffer when the match
  completes: a term is never split across the release boundary.
- **Classifier** (:class:`WindowClassifier`, optional): any HF sequence classifier, run on a
  sliding window (the last ``window_chars`` characters of passed text plus the candidate text)
  every ``stride`` pieces; text the blocklist would release waits for the classifier's verdict.
- **Hold-back cap**: at most ``hold_tokens`` pieces are ever held. If a pending partial match
  would need more, the moderator fails closed: the held span is treated as a hit (rule
  ``holdback``), never released unchecked.
- **On a hit**: ``stop`` drops the buffer and ends the stream with the policy message and a
  :class:`ModerationEvent`; ``redact`` replaces the matched span with the redaction text and goes
  on. Events name the entity id and category, never the term (that would leak it), and are logged
  server-side with the term.

The same blocklist and classifier check the user's input (:meth:`Moderation.check_text`).

Example:
    >>> mod = Moderation.from_dict({"entities": [{"id": "e1", "terms": ["Voldemort"]}]})
    >>> m = mod.stream()
    >>> [m.feed(p).text for p in ["It was V", "old", "e mort."]]
    ['It was ', '', '']
    >>> m.stopped, m.events[0].entity
    (True, 'e1')
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rag.serve.normalize import fold, fold_char

logger = logging.getLogger(__name__)

DEFAULT_POLICY_MESSAGE = "[This response was stopped by the content policy.]"
DEFAULT_INPUT_MESSAGE = "I can't help with that request: it mentions a topic this service does not discuss."


class ModerationConfigError(ValueError):
    """A moderation config that is malformed (the message names the file and field)."""


@dataclass
class Entity:
    """A blocked entity: an id and category (shown to clients) and its aliases (never shown)."""

    id: str
    terms: list[str]
    category: str = "blocked"
    whole_word: bool | None = None  # None: auto (short ASCII terms only)


@dataclass
class ModerationEvent:
    """What the moderator did; ``to_dict`` is what clients see (no term text)."""

    stage: str  # "input" | "output"
    rule: str  # "blocklist" | "classifier" | "holdback"
    action: str  # "stop" | "redact" | "refuse"
    entity: str | None = None
    category: str | None = None
    score: float | None = None
    offset: int | None = None  # character offset in the generated text

    def to_dict(self) -> dict[str, Any]:
        return {"type": "moderation", **{k: v for k, v in asdict(self).items() if v is not None}}


class _AhoCorasick:
    """Aho–Corasick over folded characters; each state knows its depth (the prefix length)."""

    def __init__(self, patterns: Sequence[tuple[str, int]]):
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        self.fail = [0]
        self.out: list[list[int]] = [[]]  # pattern ids ending here (including via fail links)
        self.lengths: dict[int, int] = {}
        for pat, pid in patterns:
            s = 0
            for ch in pat:
                nxt = self.goto[s].get(ch)
                if nxt is None:
                    nxt = len(self.goto)
                    self.goto.append({})
                    self.depth.append(self.depth[s] + 1)
                    self.fail.append(0)
                    self.out.append([])
                    self.goto[s][ch] = nxt
                s = nxt
            self.out[s].append(pid)
            self.lengths[pid] = len(pat)
        queue = deque(self.goto[0].values())
        while queue:
            s = queue.popleft()
            for ch, nxt in self.goto[s].items():
                queue.append(nxt)
                f = self.fail[s]
                while f and ch not in self.goto[f]:
                    f = self.fail[f]
                self.fail[nxt] = self.goto[f].get(ch, 0) if self.goto[f].get(ch, 0) != nxt else 0
                self.out[nxt] = self.out[nxt] + self.out[self.fail[nxt]]

    def step(self, s: int, ch: str) -> int:
        while s and ch not in self.goto[s]:
            s = self.fail[s]
        return self.goto[s].get(ch, 0)


@dataclass
class Match:
    entity: Entity
    start: int  # original character offsets, end exclusive
    end: int
    term: str


class Blocklist:
    """Entities with aliases, matched on folded text (see the module docstring).

    Args:
        entities: the entities; each alias is folded once here.
        short_term: ASCII aliases shorter than this many folded characters must stand as whole
            words (a letter or digit right before or after, with nothing in between, is no match),
            so ``ass`` does not fire inside ``class``; longer aliases match anywhere, which also
            catches ``Voldemorts``. An entity's ``whole_word`` overrides this.
    """

    def __init__(self, entities: Sequence[Entity], short_term: int = 5):
        self.entities = list(entities)
        patterns, self._meta = [], []
        for ent in self.entities:
            for term in ent.terms:
                folded = fold(term)
                if not folded:
                    raise ModerationConfigError(f"entity {ent.id!r}: term {term!r} has no letters or digits")
                whole = ent.whole_word if ent.whole_word is not None else (folded.isascii() and len(folded) < short_term)
                patterns.append((folded, len(self._meta)))
                self._meta.append((ent, term, whole))
        self.ac = _AhoCorasick(patterns)
        self.max_len = max((len(p) for p, _ in patterns), default=0)

    def __len__(self) -> int:
        return len(self._meta)

    def scan(self, text: str, before: str = "", final: bool = True) -> tuple[list[Match], int]:
        """Matches in ``text`` and where the still-pending part starts.

        Args:
            text: the unreleased text.
            before: the released character just before ``text`` (for whole-word starts).
            final: no more text will follow (a whole-word match at the very end is complete).

        Returns:
            ``(matches, hold_from)``: complete matches (left to right, non-overlapping, earliest
            first) and the original offset from which text must be held because a term may still
            complete there (``len(text)`` when nothing is pending).
        """
        state = 0
        folded_pos: list[int] = []  # original index of each folded character
        candidates: list[tuple[int, int, int]] = []  # (folded start, folded end, pattern id)
        for i, ch in enumerate(text):
            f = fold_char(ch)
            for c in f:
                folded_pos.append(i)
                state = self.ac.step(state, c)
                for pid in self.ac.out[state]:
                    n = len(folded_pos)
                    candidates.append((n - self.ac.lengths[pid], n, pid))
        n = len(folded_pos)
        hold_from = folded_pos[n - self.ac.depth[state]] if self.ac.depth[state] else len(text)
        matches: list[Match] = []
        for fs, fe, pid in sorted(candidates):
            ent, term, whole = self._meta[pid]
            start, end = folded_pos[fs], folded_pos[fe - 1] + 1
            if whole:
                if not self._boundary_before(text, before, start):
                    continue
                if end == len(text) and not final:
                    hold_from = min(hold_from, start)  # the next character decides
                    continue
                if end < len(text) and fold_char(text[end]):
                    continue
            if matches and start < matches[-1].end:
                continue
            matches.append(Match(ent, start, end, term))
        return matches, hold_from

    @staticmethod
    def _boundary_before(text: str, before: str, start: int) -> bool:
        prev = text[start - 1] if start > 0 else before
        return not prev or not fold_char(prev)


@dataclass
class ClassifierConfig:
    """An HF sequence classifier run on a sliding window."""

    path: str
    labels: list[str] = field(default_factory=lambda: ["toxic"])
    threshold: float = 0.5
    window_chars: int = 400
    stride: int = 8


class WindowClassifier:
    """Any ``AutoModelForSequenceClassification`` folder; flags a window when a blocked label's
    probability (softmax; sigmoid for multi-label models) reaches ``threshold``."""

    def __init__(self, cfg: ClassifierConfig):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(cfg.path).eval()
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        unknown = [lab for lab in cfg.labels if lab not in id2label.values()]
        if unknown:
            raise ModerationConfigError(f"classifier {cfg.path}: labels {unknown} not in the model's labels "
                                        f"{sorted(id2label.values())}")
        self.label_ids = [i for i, lab in id2label.items() if lab in cfg.labels]
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self._torch = torch

    def score(self, text: str) -> float:
        """The highest probability among the blocked labels."""
        enc = self.tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
        with self._torch.inference_mode():
            logits = self.model(**enc).logits[0].float()
        probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
        return float(probs[self.label_ids].max())


@dataclass
class ModerationConfig:
    """The YAML moderation config (see ``configs/serve/moderation.yaml``)."""

    entities: list[Entity] = field(default_factory=list)
    hold_tokens: int = 32
    action: str = "stop"
    policy_message: str = DEFAULT_POLICY_MESSAGE
    input_message: str = DEFAULT_INPUT_MESSAGE
    redaction: str = "[redacted]"
    check_input: bool = True
    short_term: int = 5
    classifier: ClassifierConfig | None = None

    def __post_init__(self) -> None:
        if self.action not in ("stop", "redact"):
            raise ModerationConfigError(f"action must be 'stop' or 'redact', got {self.action!r}")
        if not 1 <= self.hold_tokens <= 4096:
            raise ModerationConfigError(f"hold_tokens must be in 1..4096, got {self.hold_tokens}")
        if self.classifier is not None and not 1 <= self.classifier.stride <= self.hold_tokens:
            raise ModerationConfigError(f"classifier.stride must be in 1..hold_tokens ({self.hold_tokens}), "
                                        f"got {self.classifier.stride}")
        if fold(self.redaction) and any(fold(self.redaction) in fold(t) or fold(t) in fold(self.redaction)
                                        for e in self.entities for t in e.terms):
            raise ModerationConfigError("redaction text overlaps a blocked term")


class Moderation:
    """A loaded moderation policy: blocklist, optional classifier, action and messages."""

    def __init__(self, cfg: ModerationConfig):
        self.cfg = cfg
        self.blocklist = Blocklist(cfg.entities, short_term=cfg.short_term)
        self.classifier = WindowClassifier(cfg.classifier) if cfg.classifier and cfg.classifier.path else None

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "Moderation":
        return cls(_parse_config(data, source))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Moderation":
        import yaml

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"moderation config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ModerationConfigError(f"{path}: not valid YAML: {err}") from None
        return cls(_parse_config(data, str(path)))

    def stream(self) -> "StreamModerator":
        return StreamModerator(self)

    def check_text(self, text: str, stage: str = "input") -> ModerationEvent | None:
        """Check a whole text (a prompt); the first hit as an event, or None."""
        matches, _ = self.blocklist.scan(text, final=True)
        if matches:
            m = matches[0]
            logger.warning("moderation %s: blocked entity %s (term %r)", stage, m.entity.id, m.term)
            return ModerationEvent(stage, "blocklist", "refuse", m.entity.id, m.entity.category)
        if self.classifier is not None and text.strip():
            score = self.classifier.score(text[-self.cfg.classifier.window_chars * 4:])
            if score >= self.cfg.classifier.threshold:
                logger.warning("moderation %s: classifier score %.3f", stage, score)
                return ModerationEvent(stage, "classifier", "refuse", score=round(score, 4))
        return None


def redact_text(moderation: "Moderation", text: str) -> str:
    """``text`` with every blocked term replaced by the redaction text (for citations and titles)."""
    out, rest = [], text
    while True:
        matches, _ = moderation.blocklist.scan(rest, final=True)
        if not matches:
            return "".join(out) + rest
        m = matches[0]
        out.append(rest[:m.start] + moderation.cfg.redaction)
        rest = rest[m.end:]


def _parse_config(data: dict, source: str) -> ModerationConfig:
    if not isinstance(data, dict):
        raise ModerationConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    known = {"entities", "hold_tokens", "action", "policy_message", "input_message", "redaction", "check_input",
             "short_term", "classifier"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModerationConfigError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
    entities = []
    for i, e in enumerate(data.get("entities") or []):
        where = f"{source}: entities[{i}]"
        if not isinstance(e, dict) or "id" not in e or "terms" not in e:
            raise ModerationConfigError(f"{where}: needs 'id' and 'terms' (a list of aliases)")
        terms = e["terms"]
        if isinstance(terms, str) or not isinstance(terms, list) or not terms or \
                not all(isinstance(t, str) and t.strip() for t in terms):
            raise ModerationConfigError(f"{where}.terms: expected a non-empty list of strings, got {terms!r}")
        extra = sorted(set(e) - {"id", "terms", "category", "whole_word"})
        if extra:
            raise ModerationConfigError(f"{where}: unknown field(s) {extra}")
        entities.append(Entity(str(e["id"]), list(terms), str(e.get("category", "blocked")), e.get("whole_word")))
    kwargs = {k: v for k, v in data.items() if k not in ("entities", "classifier")}
    clf = data.get("classifier")
    if clf:
        if not isinstance(clf, dict) or not clf.get("path"):
            raise ModerationConfigError(f"{source}: classifier needs a 'path' (an HF sequence-classifier folder)")
        try:
            kwargs["classifier"] = ClassifierConfig(**clf)
        except TypeError as err:
            raise ModerationConfigError(f"{source}: classifier: {err}") from None
    try:
        return ModerationConfig(entities=entities, **kwargs)
    except ModerationConfigError as err:
        raise ModerationConfigError(f"{source}: {err}") from None
    except TypeError as err:
        raise ModerationConfigError(f"{source}: {err}") from None


@dataclass
class Released:
    """What one :meth:`StreamModerator.feed` lets through, and the event if it fired."""

    text: str
    event: ModerationEvent | None = None
    stopped: bool = False


class StreamModerator:
    """Per-stream state: the hold-back buffer, released offset, and events.

    Attributes:
        held_max: the most pieces held at once (the hold-back delay in tokens).
        events: every :class:`ModerationEvent` of this stream.
    """

    def __init__(self, moderation: Moderation):
        self.m = moderation
        self.cfg = moderation.cfg
        self.buf = ""  # generated text not yet past the blocklist (unmodified)
        self.buf_start = 0  # offset of buf[0] in the generated text
        self.cbuf = ""  # text past the blocklist (maybe redacted), waiting for the classifier
        self.cbuf_start = 0  # offset in the generated text where cbuf's source begins
        self.cbuf_pieces = 0
        self.passed_tail = ""  # recent released text: the classifier's left context, the boundary char
        self.released_chars = 0
        self.piece_ends: deque[int] = deque()  # end offset (in generated text) of each held piece
        self.total_chars = 0
        self.stopped = False
        self.events: list[ModerationEvent] = []
        self.held_max = 0

    @property
    def held_pieces(self) -> int:
        return len(self.piece_ends)

    def feed(self, piece: str) -> Released:
        """Add one piece (a token's text); return the text now safe to send."""
        if self.stopped:
            return Released("", None, True)
        self.total_chars += len(piece)
        if piece:
            self.piece_ends.append(self.total_chars)
        self.buf += piece
        out = self._advance(final=False)
        self.held_max = max(self.held_max, self.held_pieces)
        return out

    def finish(self) -> Released:
        """The stream ended: check what is held as final text and release it if it passes."""
        if self.stopped:
            return Released("", None, True)
        return self._advance(final=True)

    # -- internals -------------------------------------------------------------------------------

    def _advance(self, final: bool) -> Released:
        out, event = "", None
        while True:
            before = self.cbuf[-1:] or self.passed_tail[-1:]
            matches, hold_from = self.m.blocklist.scan(self.buf, before=before, final=final)
            if not matches:
                break
            m = matches[0]
            if self.cfg.action == "redact" and not final and hold_from < m.start:
                break  # a longer term that starts earlier is still pending: let it decide what to redact
            if self.cfg.action == "stop":
                # the text before the match (and before any longer pending term) is clean: it still goes
                # out, through the classifier if any
                cut = min(m.start, hold_from)
                self._to_classifier(self.buf[:cut], cut)
                got = self._classify(force=True)
                out += got.text
                if got.stopped:
                    return Released(out, got.event, True)
                return Released(out, self._hit("blocklist", m.entity, m.start, m.term), True)
            event = self._hit("blocklist", m.entity, m.start, m.term)
            # redact: the text before the match moves on with the redaction in place of the match
            self._to_classifier(self.buf[:m.start] + self.cfg.redaction, m.end)
        ready = len(self.buf) if final else hold_from
        self._to_classifier(self.buf[:ready], ready)
        got = self._classify(force=final)
        out, event = out + got.text, got.event or event
        if got.stopped:
            return Released(out, event, True)
        if len(self.piece_ends) > self.cfg.hold_tokens and self.cbuf:
            got = self._classify(force=True)  # the classifier must not make the hold exceed the cap
            out, event = out + got.text, got.event or event
            if got.stopped:
                return Released(out, event, True)
        if len(self.piece_ends) > self.cfg.hold_tokens and self.buf:
            # a pending partial match would need more than hold_tokens: fail closed
            event = self._hit("holdback", None, 0, self.buf)
            if self.cfg.action == "stop":
                return Released(out, event, True)
            self._to_classifier(self.cfg.redaction, len(self.buf))
            got = self._classify(force=True)
            out, event = out + got.text, got.event or event
            if got.stopped:
                return Released(out, event, True)
        return Released(out, event, False)

    def _to_classifier(self, text: str, consumed: int) -> None:
        """Move the first ``consumed`` characters of ``buf`` on, as ``text`` (redacted or not)."""
        if consumed:
            if not self.cbuf:
                self.cbuf_start = self.buf_start
            self.buf = self.buf[consumed:]
            self.buf_start += consumed
        if text:
            self.cbuf += text
            self.cbuf_pieces += 1
        elif not self.cbuf:
            self._drop_released_pieces()

    def _classify(self, force: bool) -> Released:
        """Release ``cbuf`` when the classifier (if any) passes its window."""
        clf = self.m.classifier
        if not self.cbuf:
            return Released("")
        if clf is not None:
            if not force and self.cbuf_pieces < self.cfg.classifier.stride:
                return Released("")
            window = self.passed_tail[-self.cfg.classifier.window_chars:] + self.cbuf
            score = clf.score(window)
            if score >= self.cfg.classifier.threshold:
                event = self._hit("classifier", None, self.released_chars, None, score=score)
                if self.cfg.action == "stop":
                    return Released("", event, True)
                self.cbuf = self.cfg.redaction
        text, self.cbuf, self.cbuf_pieces = self.cbuf, "", 0
        self._release(text)
        return Released(text)

    def _release(self, text: str) -> None:
        self.released_chars += len(text)
        self.passed_tail = (self.passed_tail + text)[-4096:]
        self._drop_released_pieces()

    def _drop_released_pieces(self) -> None:
        """Pieces wholly before the first held character are no longer held."""
        held_from = self.cbuf_start if self.cbuf else self.buf_start
        while self.piece_ends and self.piece_ends[0] <= held_from:
            self.piece_ends.popleft()

    def _hit(self, rule: str, entity: Entity | None, offset: int, term: str | None,
             score: float | None = None) -> ModerationEvent:
        action = self.cfg.action
        ev = ModerationEvent("output", rule, action, entity.id if entity else None,
                             entity.category if entity else None,
                             round(score, 4) if score is not None else None, self.released_chars + len(self.cbuf))
        logger.warning("moderation output: %s %s (entity=%s, term=%r, score=%s)", action, rule,
                       ev.entity, term, ev.score)
        self.events.append(ev)
        if action == "stop":
            self.stopped = True
            self.buf = self.cbuf = ""
            self.piece_ends.clear()
        return ev
