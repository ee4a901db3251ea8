"""Contested topics: detect them, then answer with two labelled perspectives or neutrally.

A deployment lists contested topics in YAML (``configs/serve/contested.yaml``): each has an id,
keywords/entities (matched with the moderation blocklist's folding, so spelling tricks do not
hide a topic) and the labels of its two perspectives. A classifier path (any HF sequence
classifier with a ``contested`` label) can replace or complement the list. The per-deployment
``mode`` picks what happens when a question is contested:

- ``two-sided``: the answer is generated as two sections, each opened by the server with its
  label (``Supporters' view:``/``Critics' view:``), so the structure holds whatever the model does;
  an operator line tells the model to argue each side in its own section;
- ``neutral``: one answer, with an operator line asking for a neutral summary of the positions;
- ``off``: no special handling.

Example:
    >>> d = ContestedDetector.from_dict({"mode": "two-sided", "topics": [
    ...     {"id": "nuclear", "keywords": ["nuclear power"], "perspectives": ["For", "Against"]}]})
    >>> d.detect("Is NUCLEAR-power safe?").id
    'nuclear'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.serve.moderation import Blocklist, ClassifierConfig, Entity, ModerationConfigError, WindowClassifier

MODES = ("two-sided", "neutral", "off")


@dataclass
class Topic:
    id: str
    keywords: list[str]
    perspectives: tuple[str, str] = ("Supporters' view", "Critics' view")


@dataclass
class ContestedDetector:
    """Keyword/entity topics and an optional classifier; ``mode`` is the deployment's switch."""

    topics: list[Topic] = field(default_factory=list)
    mode: str = "two-sided"
    classifier: ClassifierConfig | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ModerationConfigError(f"contested mode must be one of {MODES}, got {self.mode!r}")
        self._blocklist = Blocklist([Entity(t.id, t.keywords) for t in self.topics]) if self.topics else None
        self._by_id = {t.id: t for t in self.topics}
        self._clf = WindowClassifier(self.classifier) if self.classifier else None

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "ContestedDetector":
        if not isinstance(data, dict):
            raise ModerationConfigError(f"{source}: expected a mapping")
        unknown = sorted(set(data) - {"mode", "topics", "classifier"})
        if unknown:
            raise ModerationConfigError(f"{source}: unknown field(s) {unknown}; known: mode, topics, classifier")
        topics = []
        for i, t in enumerate(data.get("topics") or []):
            where = f"{source}: topics[{i}]"
            if not isinstance(t, dict) or not t.get("id") or not isinstance(t.get("keywords"), list) or \
                    not t["keywords"]:
                raise ModerationConfigError(f"{where}: needs 'id' and a non-empty 'keywords' list")
            persp = t.get("perspectives", ["Supporters' view", "Critics' view"])
            if not isinstance(persp, list) or len(persp) != 2 or not all(isinstance(p, str) and p for p in persp):
                raise ModerationConfigError(f"{where}.perspectives: expected two labels, got {persp!r}")
            topics.append(Topic(str(t["id"]), [str(k) for k in t["keywords"]], (persp[0], persp[1])))
        clf = data.get("classifier")
        try:
            return cls(topics, data.get("mode", "two-sided"), ClassifierConfig(**clf) if clf else None)
        except (TypeError, ModerationConfigError) as err:
            raise ModerationConfigError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ContestedDetector":
        import yaml

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"contested-topics config not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))

    def detect(self, text: str) -> Topic | None:
        """The contested topic ``text`` is about, or None (always None when ``mode`` is ``off``)."""
        if self.mode == "off":
            return None
        if self._blocklist is not None:
            matches, _ = self._blocklist.scan(text)
            if matches:
                return self._by_id[matches[0].entity.id]
        if self._clf is not None and self._clf.score(text) >= self._clf.cfg.threshold:
            return Topic("classifier", [], ("Supporters' view", "Critics' view"))
        return None

    def plan(self, topic: Topic, mode: str | None = None) -> dict[str, Any]:
        """How to answer: operator lines and the answer sections (label prefixes)."""
        mode = mode or self.mode
        a, b = topic.perspectives
        if mode == "two-sided":
            return {"mode": mode, "topic": topic.id, "perspectives": [a, b],
                    "operator": [f"This question is contested. Answer in two labelled sections: first '{a}', "
                                 f"then '{b}'. Present each side's strongest case fairly; do not pick a winner."],
                    "sections": [f"{a}: ", f"{b}: "]}
        return {"mode": "neutral", "topic": topic.id, "perspectives": [],
                "operator": ["This question is contested. Give one neutral answer that summarises the main "
                             "positions without taking a side."],
                "sections": [""]}
