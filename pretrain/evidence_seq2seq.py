"""Retrieval-augmented rows for an encoder-decoder: the evidence through the encoder, the chunk as target.

``wandao augment pretrain`` packs examples ``evidence (mask 0) + chunk (mask 1) + EOS (mask 0)`` into
rows of ``seq_len`` tokens, the row's tail padded with EOS (mask 0). A decoder-only model reads such a
row as it is, with the loss over the chunks (In-Context RALM). An encoder-decoder (``arch: t5``) reads
each example the way the essay's encoder-decoder and Fusion-in-Decoder read evidence: the encoder gets
the retrieved neighbours, the decoder writes the chunk and its EOS, so everything it takes from the
evidence goes through cross-attention.

The examples are found from the loss mask alone: a maximal run of 1s inside a row is a chunk, the
token after it is its closing EOS, and its evidence is every token since the previous example's EOS
(or the row's start). The token folder is therefore all the trainer reads; a folder whose chunks are
not each closed by EOS is not in this format and is refused with the row and offset.

Evidence longer than the encoder (``block_size`` tokens, its EOS included) keeps its start: the
neighbours come in rank order, so the cut drops the lowest-ranked text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from pretrain.data import TokenFile
    from pretrain.span_corruption import Seq2SeqBatch

# Rows are scanned this many at a time, so a folder larger than RAM is indexed in bounded memory.
_SCAN_ROWS = 65_536


def find_examples(f: "TokenFile", eos_id: int) -> np.ndarray:
    """``(n, 3)`` int64 array of ``(evidence_start, chunk_start, chunk_end)`` positions into ``f.tokens``,
    one row per example of a packed, loss-masked token folder (``chunk_end`` is the closing EOS's position).

    Example (seq_len 8, EOS = 0; ``e`` evidence, ``c`` chunk)::

        tokens  e e c c 0 c 0 0      mask  0 0 1 1 0 1 0 0
        -> [[0, 2, 4], [5, 5, 6]]    (the second chunk has no evidence)
    """
    from pretrain.data import DataFormatError

    L = f.seq_len
    if L is None or f.loss_mask is None:
        raise DataFormatError(f.folder, "evidence-through-the-encoder reads packed rows with a loss mask "
                                        "(wandao augment pretrain output)",
                              field="seq_len" if L is None else "has_loss_mask")
    out = []
    for lo in range(0, f.num_rows, _SCAN_ROWS):
        hi = min(f.num_rows, lo + _SCAN_ROWS)
        mask = np.asarray(f.loss_mask[lo * L:hi * L], dtype=bool).reshape(-1, L)
        toks = f.tokens[lo * L:hi * L].reshape(-1, L)
        # A chunk starts where the mask turns on and ends where it turns off, never across a row.
        edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)  # (rows, L + 1)
        start_r, start_c = np.nonzero(edges == 1)
        end_r, end_c = np.nonzero(edges == -1)  # both in row-major order: the runs pair up
        bad = np.flatnonzero(end_c == L)
        if len(bad) == 0:
            bad = np.flatnonzero(toks[end_r, end_c] != eos_id)
        if len(bad):
            r, c = int(end_r[bad[0]]) + lo, int(end_c[bad[0]])
            raise DataFormatError(f.folder, f"row {r}: the chunk ending at offset {c} is not closed by EOS "
                                            f"(id {eos_id}); not wandao augment pretrain rows", field="loss_mask")
        # Evidence runs from the previous example's EOS + 1 in the same row, or from the row's start.
        same_row = np.r_[False, start_r[1:] == end_r[:-1]]
        ev_c = np.where(same_row, np.r_[0, end_c[:-1] + 1], 0)
        base = (start_r + lo) * L
        out.append(np.stack([base + ev_c, base + start_c, base + end_c], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)


class EvidenceSeq2SeqSampler:
    """Encoder-decoder batches from retrieval-augmented rows, resumable like the other samplers.

    Each batch row picks a source by weight, then a random example: the encoder reads its evidence
    (at most ``max_encoder_tokens - 1`` tokens, then EOS), the decoder its chunk then EOS. Rows are
    padded to the batch's longest (encoder: ``pad_id`` with ``enc_mask`` 0; targets: -100, which the
    loss ignores). ``tokens_length`` (mean evidence + chunk + EOS tokens per example) is what a row
    consumes, for tokens/s and epochs.
    """

    def __init__(self, files: Sequence["TokenFile"], weights: Sequence[float] | None, batch_size: int,
                 max_encoder_tokens: int, seed: int, eos_id: int, pad_id: int, device: str = "cpu",
                 examples: Sequence[np.ndarray] | None = None):
        import torch

        from pretrain.data import DataFormatError

        if not files:
            raise ValueError("EvidenceSeq2SeqSampler needs at least one token source")
        if max_encoder_tokens < 2:
            raise ValueError(f"max_encoder_tokens={max_encoder_tokens}: the encoder needs room for evidence and EOS")
        self.files = list(files)
        self.examples = list(examples) if examples is not None else [find_examples(f, eos_id) for f in self.files]
        for f, ex in zip(self.files, self.examples):
            if len(ex) == 0:
                raise DataFormatError(f.folder, "no examples (no token has loss mask 1)", field="loss_mask")
        self.batch_size, self.max_encoder_tokens, self.device = batch_size, max_encoder_tokens, device
        self.eos_id, self.pad_id = eos_id, pad_id
        w = np.asarray(weights if weights is not None else [1.0] * len(self.files), dtype=np.float64)
        self.weights = torch.tensor(w / w.sum(), dtype=torch.float64)
        ev_start, chunk_start, chunk_end = np.concatenate(self.examples).T
        self.tokens_length = int(round(float((chunk_end - ev_start + 1).mean())))
        self.targets_length = int((chunk_end - chunk_start).max()) + 1
        # Mean tokens per row through each stack, for FLOPs (evidence cut to the encoder, then EOS).
        self.encoder_length = float(np.minimum(chunk_start - ev_start, max_encoder_tokens - 1).mean()) + 1
        self.decoder_length = float((chunk_end - chunk_start).mean()) + 1
        self.generator = torch.Generator().manual_seed(seed)
        self.seed, self.batches = seed, 0

    def next_batch(self) -> "Seq2SeqBatch":
        import torch

        from pretrain.span_corruption import Seq2SeqBatch, shift_right

        B, g = self.batch_size, self.generator
        self.batches += 1
        if len(self.files) == 1:
            choice = torch.zeros(B, dtype=torch.long)
        else:
            choice = torch.multinomial(self.weights, B, replacement=True, generator=g)
        picks = [torch.randint(len(self.examples[int(k)]), (1,), generator=g).item() for k in choice]
        encs, tgts = [], []
        for k, i in zip(choice.tolist(), picks):
            ev0, c0, c1 = (int(x) for x in self.examples[k][i])
            toks = self.files[k].tokens
            evidence = np.asarray(toks[ev0:min(c0, ev0 + self.max_encoder_tokens - 1)], dtype=np.int64)
            encs.append(np.append(evidence, self.eos_id))
            tgts.append(np.asarray(toks[c0:c1 + 1], dtype=np.int64))  # the chunk and its closing EOS
        S, T = max(map(len, encs)), max(map(len, tgts))
        enc = torch.full((B, S), self.pad_id, dtype=torch.long)
        enc_mask = torch.zeros(B, S, dtype=torch.long)
        targets = torch.full((B, T), -100, dtype=torch.long)
        for r, (e, t) in enumerate(zip(encs, tgts)):
            enc[r, :len(e)] = torch.from_numpy(e)
            enc_mask[r, :len(e)] = 1
            targets[r, :len(t)] = torch.from_numpy(t)
        idx = shift_right(targets.masked_fill(targets == -100, self.pad_id), self.pad_id)
        batch = Seq2SeqBatch(enc, idx, targets, enc_mask)
        if self.device != "cpu":
            batch = Seq2SeqBatch(*(t.pin_memory().to(self.device, non_blocking=True) for t in batch))
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])
