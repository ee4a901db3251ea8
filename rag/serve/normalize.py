"""Normalised text for term matching: obfuscations of a blocked term fold to the same string.

:func:`normalize` maps every character of a text to zero or more *folded* characters and keeps,
for each folded character, the index of the original character it came from, so a match found in
the folded string maps back to an exact span of the original (to redact it, or to know where the
hold-back boundary may fall). Per character:

1. format characters (Unicode category ``Cf``: zero-width space/joiners, BOM, bidi controls, soft
   hyphen) are dropped;
2. compatibility decomposition (NFKD) folds full-width/half-width forms (``Ｖｏｌｄ`` → ``Vold``),
   mathematical and circled letters (``𝐕``, ``ⓥ``) and ligatures; combining marks (accents) are
   dropped (``Vòldemört`` → ``Voldemort``);
3. case folding (``ß`` → ``ss``), then the look-alike table of :mod:`rag.sanitize` (Cyrillic ``о``,
   Greek ``ο`` → ``o``), then lower case;
4. only letters and digits are kept: spaces, punctuation and symbols inserted between characters
   (``V.o l-d``) vanish, so they cannot split a term.

Chinese needs no case or width rules beyond NFKD (full-width punctuation between characters is
dropped by step 4); traditional/simplified variants are listed as aliases in the blocklist.

Example:
    >>> normalize("Ｖｏ\\u200bl-d ЕＭＯＲＴ").folded
    'voldemort'
    >>> normalize("a.b").index          # 'a' came from 0, 'b' from 2
    [0, 2]
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from rag.sanitize import skeleton

#: Look-alikes that survive NFKD and are not in rag.sanitize's table (lower-case targets).
_EXTRA_CONFUSABLES = {
    "ɑ": "a", "ᴀ": "a", "ƅ": "b", "ᴄ": "c", "ԁ": "d", "ɗ": "d", "ᴅ": "d", "ҽ": "e", "ɛ": "e", "ƒ": "f", "ɢ": "g",
    "һ": "h", "ɩ": "i", "ǀ": "l", "ⅼ": "l", "ᴋ": "k", "ʟ": "l", "ɱ": "m", "ո": "n", "ᴏ": "o", "ο": "o", "σ": "o",
    "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ʋ": "v", "ᴠ": "v", "ᴡ": "w", "ẋ": "x", "ʏ": "y", "ᴢ": "z",
    "ø": "o", "đ": "d", "ħ": "h", "ł": "l", "ŧ": "t", "æ": "ae", "œ": "oe", "ð": "d", "þ": "th",
}


@lru_cache(maxsize=65536)
def fold_char(ch: str) -> str:
    """The folded form of one character: zero or more lower-case letters/digits."""
    if ch.isascii():
        return ch.lower() if ch.isalnum() else ""
    if unicodedata.category(ch) == "Cf":
        return ""
    out = []
    for c in unicodedata.normalize("NFKD", ch):
        if unicodedata.category(c).startswith("M"):  # combining accents
            continue
        for cc in skeleton(c).casefold():  # look-alike capitals first: Greek "Μ" -> "M", not "μ"
            cc = _EXTRA_CONFUSABLES.get(cc, cc)
            for x in skeleton(cc).lower():
                x = _EXTRA_CONFUSABLES.get(x, x)
                if x.isalnum():
                    out.append(x)
    return "".join(out)


@dataclass
class Normalized:
    """A folded string and, per folded character, the index of its original character."""

    folded: str
    index: list[int]


def normalize(text: str, offset: int = 0) -> Normalized:
    """Fold ``text`` (see the module docstring); ``index`` entries are ``offset`` + original index."""
    folded: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        f = fold_char(ch)
        if f:
            folded.append(f)
            index.extend([offset + i] * len(f))
    return Normalized("".join(folded), index)


def fold(text: str) -> str:
    """Just the folded string (blocklist terms are stored this way)."""
    return "".join(fold_char(ch) for ch in text)
