"""Everything the decoder reads besides the analog cells, counted at a real coder's output.

A store run's decoder needs, per stored tensor: its keep-mask (pruning; with the mask in the
cells instead, the number of kept weights per output channel, ``kept_counts``, and the mask
bit of each position cell that did not verify, ``unverified_mask``), the signs of kept
weights (codes that store |w|), its scale and window top, how many replicas each kept
weight has, which cells verified (the decoder prefers verified replicas), and the network's
parameters kept digital (biases, norms) in fp16 (:mod:`.digital_parameters`). Masks, replica
maps and verify flags are range-coded (``constriction``) with their own empirical
distribution, whose probabilities are counted too (masks at the cheapest of three codes,
:func:`mask_bits`); what the coder really writes is what is counted.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ..coding import CodeConfig, EncodedTensor, kept_per_row, unverified_positions
from . import digital_parameters
from .digital_medium import Medium
from .layout import Layout

PROBABILITY_BITS = 16  # each symbol probability of a coded stream's model, stored beside it
SCALE_BITS = 96        # per tensor: scale, window top and floor, fp32 each
MASK_SCALE_BITS = 64   # per tensor with the mask in the cells: its gap and threshold, fp32 each
COUNT_HEADER_BITS = 32  # per tensor with the mask in the cells: the smallest count and the width, 16 bits each
FORMAT_BITS = 1        # per tensor: whether its replica map is per output channel or per weight


def coded_bits(symbols: np.ndarray) -> int:
    """Bits of a range-coded stream of small non-negative integers, coded with their own
    empirical distribution, plus that distribution (``PROBABILITY_BITS`` per symbol value);
    a stream of one repeated value costs only its value."""
    import constriction

    x = np.asarray(symbols, np.int32).ravel()
    if x.size == 0:
        return 0
    counts = np.bincount(x)
    if np.count_nonzero(counts) == 1:
        return PROBABILITY_BITS
    model = constriction.stream.model.Categorical(counts / x.size, perfect=False)
    coder = constriction.stream.queue.RangeEncoder()
    coder.encode(x, model)
    return int(coder.num_bits()) + PROBABILITY_BITS * counts.size


MASK_FORMAT_BITS = 2   # per coded mask: which of its codes (one stream, by row, by column) was used


def mask_bits(mask: np.ndarray) -> int:
    """Bits of a keep-mask at the cheapest of three real codes, plus which one: one stream
    with the mask's own keep fraction (:func:`coded_bits`), or adaptively per output channel
    (row of the flattened tensor) or per input position (column) (:func:`adaptive_bits`),
    which pays where some lines are much denser than others."""
    m = np.asarray(mask, bool)
    if m.size == 0:
        return 0
    grid = m.reshape(m.shape[0], -1)
    return MASK_FORMAT_BITS + min(coded_bits(grid.ravel()), adaptive_bits(grid), adaptive_bits(grid.T))


def line_probabilities(grid: np.ndarray) -> np.ndarray:
    """Per bit of each row: P(one) from the row's bits before it (Krichevsky–Trofimov:
    (ones so far + 1/2) / (bits so far + 1)), which a decoder recomputes as it goes."""
    before = np.cumsum(grid, axis=1) - grid
    return (before + 0.5) / (np.arange(grid.shape[1]) + 1.0)


def adaptive_bits(grid: np.ndarray) -> int:
    """Bits of a binary matrix range-coded row by row with :func:`line_probabilities`: about
    log2 C(n, k) + ½ log2 n per row of n bits holding k ones, with nothing stored beside."""
    import constriction

    grid = np.asarray(grid, bool)
    coder = constriction.stream.queue.RangeEncoder()
    coder.encode(grid.ravel().astype(np.int32), constriction.stream.model.Bernoulli(perfect=False),
                 line_probabilities(grid).ravel())
    return int(coder.num_bits())


def side_bits(layout: Layout, code: CodeConfig, network: nn.Module, names: list[str],
              verified: np.ndarray | None = None) -> dict[str, int]:
    """Bits of every part the decoder reads (``verified``: per cell of the layout, whether it
    verified, when the decoder uses it)."""
    parts = {"mask": 0, "signs": 0, "scales": 0, "replica_map": 0, "verify_flags": 0, "digital_parameters": 0}
    if any(e.mask_in_cells for e in layout.encoded):
        parts["kept_counts"] = 0
    for enc in layout.encoded:
        if enc.mask_in_cells:
            parts["kept_counts"] += kept_count_bits(enc)
            parts["scales"] += MASK_SCALE_BITS
        elif enc.mask is not None:
            parts["mask"] += mask_bits(enc.mask)
        if code.sign_bits:
            parts["signs"] += enc.kept  # signs of trained weights do not compress
        parts["scales"] += SCALE_BITS
        parts["replica_map"] += replica_map_bits(enc)
    if verified is not None:
        parts["verify_flags"] = coded_bits(np.asarray(verified, bool)[~layout.reference])
        if "kept_counts" in parts:  # the mask bit of every position cell that did not verify
            v = np.asarray(verified, bool)
            parts["unverified_mask"] = sum(unverified_positions(e, v[layout.tensor_of == k])
                                           for k, e in enumerate(layout.encoded))
    parts["digital_parameters"] = digital_parameters.bits(network, names)
    return parts


def kept_count_bits(enc: EncodedTensor) -> int:
    """Bits of one tensor's kept weights per output channel (mask in the cells): each count
    less the smallest, in a fixed width that holds the largest, after a header with the
    smallest and the width."""
    return _count_bits(kept_per_row(enc))


def _count_bits(counts: np.ndarray) -> int:
    return COUNT_HEADER_BITS + int(counts.max() - counts.min()).bit_length() * counts.size


def mask_cells_each_way(masks: dict[str, np.ndarray], medium: Medium) -> tuple[float, float]:
    """Cells the keep-masks take (in cells of a chip whose medium is ``medium``): in the cells
    (one RESET-only cell per pruned weight, plus kept counts and the gap per tensor on the
    medium), and range-coded on the medium."""
    pruned, in_bits, coded = 0, 0, 0
    for m in masks.values():
        rows = np.asarray(m, bool).reshape(m.shape[0], -1)
        pruned += int(rows.size - rows.sum())
        in_bits += _count_bits(rows.sum(axis=1)) + MASK_SCALE_BITS
        coded += coded_bits(rows.ravel())
    return pruned + medium.cells(in_bits), medium.cells(coded)


def replica_map_bits(enc: EncodedTensor) -> int:
    """Bits of one tensor's replica counts: one count per output channel that keeps a weight
    when all kept weights of a channel have the same count, else one per kept weight; plus
    the bit that says which."""
    rows = kept_rows(enc)
    channels, first = np.unique(rows, return_index=True)
    per_channel = enc.replicas[first]
    if np.array_equal(per_channel[np.searchsorted(channels, rows)], enc.replicas):
        return FORMAT_BITS + coded_bits(per_channel - 1)
    return FORMAT_BITS + coded_bits(enc.replicas - 1)


def kept_rows(enc: EncodedTensor) -> np.ndarray:
    """Output channel (first axis) of every kept weight, in kept order."""
    flat = np.arange(enc.weights) if enc.mask is None else np.flatnonzero(enc.mask.ravel())
    return flat // (enc.weights // enc.shape[0])
