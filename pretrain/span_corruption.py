"""T5 span corruption: the encoder-decoder's pretraining objective (Raffel et al. 2020, sec. 3.1.4).

A window of raw tokens is split into noise and non-noise spans. The encoder reads the non-noise
tokens with each noise span replaced by one sentinel (``<extra_id_0>``, ``<extra_id_1>``, ...);
the decoder produces, for each sentinel in turn, the sentinel followed by the tokens it replaced::

    tokens:   Thank you  for inviting  me to your party  last  week
    noise:                ^^^^^^^^^^^                    ^^^^
    inputs:   Thank you <extra_id_0> me to your party <extra_id_1> week </s>
    targets:  <extra_id_0> for inviting <extra_id_1> last </s>

The formulas follow ``t5.data.preprocessors.random_spans_noise_mask`` / ``span_corruption`` and
HF's ``examples/flax/language-modeling/run_t5_mlm_flax.py``:

- ``num_noise_tokens = round(length * noise_density)``, clamped to ``[1, length - 1]``;
- ``num_noise_spans = round(num_noise_tokens / mean_noise_span_length)``, at least 1;
- the noise and the non-noise tokens are each cut into ``num_noise_spans`` random non-empty
  segments (``_random_segmentation``), interleaved starting with non-noise (no random roll, as
  T5's default);
- inputs = non-noise tokens + one sentinel per noise span + EOS, targets = noise tokens + one
  sentinel per span + EOS, so every window of the same length gives the same two lengths;
- :func:`compute_input_and_target_lengths` picks the raw window length whose inputs fill the
  encoder exactly (512 encoder tokens: 568 raw tokens, 114 target tokens).

Randomness comes from a ``torch.Generator`` (the batch sampler's), so a checkpoint's generator
state replays the same windows and the same masks on resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

if TYPE_CHECKING:
    import torch

    from pretrain.data import TokenFile


def sentinel_tokens(n: int) -> list[str]:
    """T5's sentinel names ``<extra_id_0>`` ... ``<extra_id_{n-1}>`` (ids are looked up by name)."""
    return [f"<extra_id_{i}>" for i in range(n)]


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` of a raw window of ``length`` tokens, as T5 counts them.

    T5's ``random_spans_noise_mask``: round the noise share, keep at least one noise and one
    non-noise token, and at least one span. One guard is ours: no more spans than non-noise tokens
    (each non-noise segment needs a token), which only binds at noise densities above about 0.75.
    """
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got length={length}")
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return num_noise, min(num_spans, length - num_noise)


def compute_input_and_target_lengths(inputs_length: int, noise_density: float,
                                     mean_noise_span_length: float) -> tuple[int, int]:
    """``(tokens_length, targets_length)``: the raw window length whose corrupted inputs (sentinels
    and EOS included) are ``inputs_length`` tokens, and the resulting targets' length.

    HF ``run_t5_mlm_flax.compute_input_and_target_lengths`` (after T5's
    ``random_spans_helper``): grow the raw length while the inputs still fit.

    Example:
        >>> compute_input_and_target_lengths(512, 0.15, 3.0)
        (568, 114)
    """
    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_nonnoise = tokens_length - num_noise
        num_spans = int(round(num_noise / mean_noise_span_length))
        # inputs: the non-noise tokens, a sentinel per noise span, one EOS; targets: the other way round
        return num_nonnoise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs, targets = lengths(tokens_length)
    # HF's "minor hack" so targets equal inputs (a round number) at density 0.5
    if noise_density == 0.5 and targets > inputs:
        tokens_length -= 1
        targets -= 1
    return tokens_length, targets


def _random_segmentation(num_items: int, num_segments: int, generator: "torch.Generator") -> "torch.Tensor":
    """Lengths of ``num_segments`` non-empty segments summing to ``num_items``, uniformly at random:
    segment starts are ``num_segments - 1`` distinct cut points among the ``num_items - 1`` gaps."""
    import torch

    first_in_segment = torch.zeros(num_items, dtype=torch.long)
    cuts = torch.randperm(num_items - 1, generator=generator)[:num_segments - 1] + 1
    first_in_segment[cuts] = 1
    segment_id = torch.cumsum(first_in_segment, 0)
    return torch.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            generator: "torch.Generator") -> "torch.Tensor":
    """A bool mask of shape ``(length,)``, True on noise tokens: ``num_noise_spans`` noise spans
    interleaved with as many non-noise spans, non-noise first (T5's ``random_spans_noise_mask``)."""
    import torch

    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, generator)
    interleaved = torch.stack([nonnoise_lengths, noise_lengths], dim=1).reshape(-1)  # n0, m0, n1, m1, ...
    span_id = torch.repeat_interleave(torch.arange(2 * num_spans), interleaved)  # (length,)
    return span_id % 2 == 1


def _keep_and_mark(tokens: "torch.Tensor", dropped: "torch.Tensor", sentinel_ids: "torch.Tensor",
                   eos_id: int) -> "torch.Tensor":
    """Replace each run of ``dropped`` positions by the next sentinel, drop the rest of the run, add EOS.
    tokens, dropped: (B, L); every row must drop the same number of tokens in the same number of runs."""
    import torch

    B = tokens.size(0)
    prev = torch.nn.functional.pad(dropped[:, :-1], (1, 0), value=False)
    starts = dropped & ~prev  # first position of each dropped run
    n_runs = int(starts.sum(1).max())
    if n_runs > len(sentinel_ids):
        raise ValueError(f"{n_runs} noise spans but only {len(sentinel_ids)} sentinel tokens; raise "
                         "span_corruption.num_sentinels")
    run_no = (torch.cumsum(starts.long(), 1) - 1).clamp(min=0)  # (B, L): which sentinel each run gets
    marked = torch.where(starts, sentinel_ids[run_no], tokens)
    keep = ~dropped | starts
    counts = keep.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("span corruption rows differ in length; every row must have the same noise counts")
    kept = marked[keep].view(B, -1)
    return torch.cat([kept, torch.full((B, 1), eos_id, dtype=kept.dtype)], dim=1)


def corrupt_spans(tokens: "torch.Tensor", noise_mask: "torch.Tensor", sentinel_ids: "torch.Tensor",
                  eos_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``(inputs, targets)`` for raw ``tokens`` (B, L) and ``noise_mask`` (B, L), as T5's
    ``noise_span_to_unique_sentinel`` / ``nonnoise_span_to_unique_sentinel`` (HF's
    ``create_sentinel_ids`` + ``filter_input_ids``): the inputs keep the non-noise tokens, the targets
    the noise tokens; each side marks the other's spans with ``sentinel_ids[0], [1], ...`` and ends in EOS."""
    return (_keep_and_mark(tokens, noise_mask, sentinel_ids, eos_id),
            _keep_and_mark(tokens, ~noise_mask, sentinel_ids, eos_id))


def shift_right(targets: "torch.Tensor", decoder_start_token_id: int) -> "torch.Tensor":
    """Decoder inputs: the targets shifted one place right behind ``decoder_start_token_id``
    (T5 starts with the pad id), as HF's ``shift_tokens_right``."""
    import torch

    start = torch.full((targets.size(0), 1), decoder_start_token_id, dtype=targets.dtype)
    return torch.cat([start, targets[:, :-1]], dim=1)


class Seq2SeqBatch(NamedTuple):
    """One encoder-decoder batch: ``enc_idx`` (B, S), ``idx`` decoder inputs (B, T), ``targets`` (B, T;
    -100 is ignored by the loss), and ``enc_mask`` (B, S; 1 = token) when encoder rows are padded."""

    enc_idx: "torch.Tensor"
    idx: "torch.Tensor"
    targets: "torch.Tensor"
    enc_mask: "torch.Tensor | None" = None


class SpanCorruptionSampler:
    """Span-corrupted batches from token streams, resumable like :class:`pretrain.data.BatchSampler`.

    A :class:`BatchSampler` draws raw windows of ``tokens_length`` tokens (random offsets into the
    packed, memory-mapped streams, documents separated by EOS); the noise masks come from the same
    generator, so :meth:`state_dict` covers both. ``next_batch()`` returns a :class:`Seq2SeqBatch`
    with encoder inputs of exactly ``input_length`` tokens.

    Example:
        >>> s = SpanCorruptionSampler(files, None, 8, 32, 0, sentinel_ids, eos_id=1, pad_id=2)  # doctest: +SKIP
        >>> enc, dec, labels = s.next_batch()  # (8, 32), (8, 8), (8, 8)  # doctest: +SKIP
    """

    def __init__(self, files: Sequence["TokenFile"], weights: Sequence[float] | None, batch_size: int,
                 input_length: int, seed: int, sentinel_ids: Sequence[int], eos_id: int, pad_id: int,
                 noise_density: float = 0.15, mean_noise_span_length: float = 3.0, device: str = "cpu"):
        import torch

        from pretrain.data import BatchSampler, DataFormatError

        for f in files:
            if f.seq_len is not None or f.loss_mask is not None:
                raise DataFormatError(f.folder, "span corruption reads token streams (seq_len null, no loss "
                                                "mask); this folder holds packed rows or a loss mask",
                                      field="seq_len" if f.seq_len is not None else "has_loss_mask")
        self.tokens_length, self.targets_length = compute_input_and_target_lengths(
            input_length, noise_density, mean_noise_span_length)
        num_noise, num_spans = noise_counts(self.tokens_length, noise_density, mean_noise_span_length)
        got = self.tokens_length - num_noise + num_spans + 1
        if got != input_length or num_noise + num_spans + 1 != self.targets_length:
            raise ValueError(f"noise_density={noise_density}, mean_noise_span_length={mean_noise_span_length} "
                             f"cannot fill {input_length} encoder tokens exactly (got {got})")
        if num_spans > len(sentinel_ids):
            raise ValueError(f"{num_spans} noise spans per window but only {len(sentinel_ids)} sentinel tokens")
        self.input_length, self.device = input_length, device
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.sentinel_ids = torch.tensor(list(sentinel_ids), dtype=torch.long)
        self.eos_id, self.pad_id = eos_id, pad_id
        # Mean tokens per row through each stack, for FLOPs: every row is the same length here.
        self.encoder_length, self.decoder_length = input_length, self.targets_length
        self.windows = BatchSampler(files, weights, batch_size, self.tokens_length - 1, seed)

    def next_batch(self) -> Seq2SeqBatch:
        import torch

        toks, _ = self.windows.next_windows()  # (B, tokens_length)
        g = self.windows.generator
        noise = torch.stack([random_spans_noise_mask(self.tokens_length, self.noise_density,
                                                     self.mean_noise_span_length, g) for _ in range(len(toks))])
        enc, targets = corrupt_spans(toks, noise, self.sentinel_ids, self.eos_id)
        batch = Seq2SeqBatch(enc, shift_right(targets, self.pad_id), targets)
        if self.device != "cpu":
            batch = Seq2SeqBatch(*(t.pin_memory().to(self.device, non_blocking=True) for t in batch[:3]))
        return batch

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)
