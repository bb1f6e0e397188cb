"""The digital medium measured on the same chip: what error-free digital storage costs there.

Random data are programmed at 1, 2 and 3 bits per cell (Gray-coded levels across the
calibrated window, placed so that every boundary has the same margin in units of the
calibrated error after the retention time, at the tolerance that makes that margin
largest; reference cells per level), read after the same retention time as the stored
model, and decoded with read thresholds placed as a memory controller tracks them: where
between two neighbouring levels the calibrated model's reads after the retention time
err least (as a fraction of the way from one level's median to the next), put between
the medians the reference cells measure (which follow the chip's actual drift). The
shape comes from the calibration's thousands of cells, the position from the chip; the
32 reference cells per level alone placed thresholds too noisily (2-bit raw BER
1.3-2.9 % between placements of the same pattern, against 1.1-1.25 % now; docs/storage.md).
The raw bit-error rate of each density, with a one-sided 95 % upper bound (Clopper–
Pearson, so a run with no errors is not taken as error-free), sizes a binary BCH code:
for each block size (512–16,384 data bits) on each field GF(2^m), m = 13–15, that holds
it, the smallest correction capability t whose block failure probability at that
bound stays below the target, with the code's exact parity (the union of the cyclotomic
cosets of α^1..α^2t, at most m·t bits); the block size with the highest rate. The
cheapest density wins. The chosen code is then run on the error pattern actually
measured: encoded and decoded with ``bchlib`` up to its t = 64; beyond it, a block counts
as decoded when it holds at most t errors, the bound every BCH decoder guarantees (and
failed otherwise, where a real decoder would also fail or miscorrect).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

from pcm_hil_noisemodel import NoiseModel

from .readback import simulate_reads

BCH_FIELDS = (13, 14, 15)  # GF(2^m): codewords up to 2^m - 1 bits (8,191 / 16,383 / 32,767)
BCHLIB_MAX_T = 64  # the largest t the BCH library (bchlib, the Linux kernel code) builds


@dataclass(frozen=True)
class MediumConfig:
    """What the medium measurement reads."""

    densities: tuple[int, ...] = (1, 2, 3)   # bits per cell tried
    cells_per_density: int = 16384           # data cells per density (the error-rate bound tightens with more)
    reference_cells_per_level: int = 32
    block_bits: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)  # data bits per BCH codeword tried
    target_block_failure: float = 1e-12      # per block, after decoding
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.densities or any(d not in (1, 2, 3, 4) for d in self.densities):
            raise ValueError(f"densities must be among 1-4 bits per cell, got {self.densities!r}")
        if type(self.cells_per_density) is not int or not 256 <= self.cells_per_density <= 1_000_000:
            raise ValueError(f"cells_per_density must be an integer in [256, 1000000] (fewer cannot bound the error "
                             f"rate below what a code corrects), got {self.cells_per_density!r}")
        if not 0 < self.target_block_failure < 1e-3:
            raise ValueError(f"target_block_failure must be in (0, 1e-3), got {self.target_block_failure!r}")

    def cells(self) -> int:
        """Cells the measurement programs."""
        return sum(self.cells_per_density + self.reference_cells_per_level * 2 ** d for d in self.densities)


@dataclass
class Pattern:
    """What the measurement writes: per cell its density, symbol, target and setting."""

    density: np.ndarray       # bits per cell of the cell's test
    symbol: np.ndarray        # level index written
    reference: np.ndarray     # reference cell (thresholds), not data
    targets_us: np.ndarray
    aims_us: np.ndarray
    tolerance_us: np.ndarray
    max_pulses: np.ndarray
    boundaries: dict[int, np.ndarray]  # per density: each read threshold's place between the level medians (0-1)


def levels(noise: NoiseModel, g_hi_us: float, bits: int, retention_s: float) -> tuple[np.ndarray, float]:
    """The 2^bits levels (µS) from the window's floor to ``g_hi_us`` with equal margins after
    ``retention_s`` (adjacent levels k·(σ_i + σ_i+1) apart, σ the calibrated error after
    retention, so every boundary errs alike), at the calibrated tolerance that makes k the
    largest; and that tolerance (µS)."""
    g_lo = float(noise.levels_us_[0])
    grid = np.linspace(g_lo, g_hi_us, 4096)
    best: tuple[float, np.ndarray, float] | None = None
    for tol in np.asarray(noise.tolerances_us_, float):
        sd = np.sqrt(noise.sq_error_after(grid, float(tol), int(noise.max_pulses_), retention_s))
        k, lv = _equal_margins(grid, sd, 2 ** bits)
        if best is None or k > best[0]:
            best = (k, lv, float(tol))
    assert best is not None
    return best[1], best[2]


def _equal_margins(grid: np.ndarray, sd: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """The largest k (bisection) for which n levels, each k·(σ_i + σ_i+1) above the one below
    from ``grid[0]``, fit on ``grid`` (σ = ``sd`` on it); the top level is the grid's top."""
    def place(k: float) -> np.ndarray | None:
        idx = [0]
        for _ in range(n - 1):
            i = idx[-1]
            ok = np.flatnonzero(grid[i:] - grid[i] >= k * (sd[i] + sd[i:]))
            if not ok.size:
                return None
            idx.append(i + int(ok[0]))
        return np.asarray(idx)

    lo, hi = 0.0, float((grid[-1] - grid[0]) / (2 * sd.min()))
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if place(mid) is not None else (lo, mid)
    idx = place(lo)
    assert idx is not None
    lv = grid[idx]
    lv[-1] = grid[-1]
    return lo, lv


def pattern(noise: NoiseModel, g_hi_us: float, cfg: MediumConfig, retention_s: float) -> Pattern:
    """Random data and reference cells for every density across the calibrated window, at
    the levels and tolerance :func:`levels` chooses for the retention time."""
    rng, model_draws = np.random.default_rng(cfg.seed), np.random.default_rng([cfg.seed, 1])
    parts, boundaries = [], {}
    for d in cfg.densities:
        lv, tol = levels(noise, g_hi_us, d, retention_s)
        sym = np.concatenate([rng.integers(0, 2 ** d, cfg.cells_per_density),
                              np.repeat(np.arange(2 ** d), cfg.reference_cells_per_level)])
        ref = np.arange(sym.size) >= cfg.cells_per_density
        t = lv[sym]
        parts.append((np.full(sym.size, d), sym, ref, t, noise.aim(t, tol), np.full(sym.size, tol)))
        boundaries[d] = _boundaries(noise, noise.aim(lv, tol), tol, retention_s, model_draws)
    cols = [np.concatenate(c) for c in zip(*parts)]
    return Pattern(*cols, np.full(cols[0].size, int(noise.max_pulses_), np.int64), boundaries)


def _boundaries(noise: NoiseModel, aims_us: np.ndarray, tol_us: float, retention_s: float,
                rng: np.random.Generator, draws: int = 32768) -> np.ndarray:
    """Per boundary between neighbouring levels (aimed at ``aims_us``): where the read
    threshold errs least on the calibrated model's reads after ``retention_s``, as a
    fraction of the way from the lower level's median read to the upper one's."""
    n = aims_us.size
    reads, _ = simulate_reads(noise, np.repeat(aims_us, draws), tol_us, np.full(n * draws, int(noise.max_pulses_)),
                              retention_s, rng)
    reads = np.sort(reads.reshape(n, draws), axis=1)
    med = np.median(reads, axis=1)
    out = np.empty(n - 1)
    for b in range(n - 1):
        grid = np.linspace(med[b], med[b + 1], 512)
        errors = draws - np.searchsorted(reads[b], grid, "right") + np.searchsorted(reads[b + 1], grid, "right")
        out[b] = np.flatnonzero(errors == errors.min()).mean() / (grid.size - 1)
    return out


def gray_bits(symbols: np.ndarray, bits: int) -> np.ndarray:
    """Gray-coded bits of each symbol (rows: symbols, columns: bits)."""
    g = symbols ^ (symbols >> 1)
    return ((g[:, None] >> np.arange(bits)) & 1).astype(np.uint8)


def decode(pat: Pattern, reads_us: np.ndarray, cfg: MediumConfig) -> list[dict[str, Any]]:
    """Per density: levels read back, raw bit errors and their rate."""
    out = []
    for d in cfg.densities:
        m = pat.density == d
        sym, ref, g = pat.symbol[m], pat.reference[m], reads_us[m]
        refs = [g[ref & (sym == s)] for s in range(2 ** d)]
        med = np.array([np.median(r) for r in refs])
        thresholds = med[:-1] + pat.boundaries[d] * np.diff(med)
        got = np.searchsorted(thresholds, g[~ref])
        want = sym[~ref]
        errors = gray_bits(got, d) ^ gray_bits(want, d)
        n_bits = errors.size
        k = int(errors.sum())
        upper = float(stats.beta.ppf(0.95, k + 1, n_bits - k))  # one-sided Clopper–Pearson
        out.append({"bits_per_cell": d, "bits": n_bits, "bit_errors": k, "raw_ber": k / n_bits,
                    "raw_ber_upper95": upper, "symbol_errors": int((got != want).sum()),
                    "reference_medians_us": med.tolist(), "read_thresholds_us": thresholds.tolist(),
                    "_errors": errors.ravel()})
    return out


@lru_cache(maxsize=None)
def _coset_union(m: int) -> np.ndarray:
    """For GF(2^m): entry j = how many exponents the union of the cyclotomic cosets of
    1..j holds (the degree of the generator polynomial of designed distance j + 1)."""
    n = 2 ** m - 1
    i = np.arange(1, n, dtype=np.int64)
    orbit = (i[None, :] << np.arange(m, dtype=np.int64)[:, None]) % n  # i·2^j mod n, j = 0..m-1
    size = m // (orbit == i).sum(axis=0)  # coset size: m over how often the orbit returns to i
    first = orbit.min(axis=0) == i  # a coset joins the union at its smallest member
    return np.concatenate([[0], np.cumsum(np.where(first, size, 0))])


def bch_parity_bits(m: int, t: int) -> int:
    """Parity bits of the binary BCH code over GF(2^m) correcting ``t`` errors: the degree of
    its generator, the union of the cyclotomic cosets of α^1..α^2t (m·t at most)."""
    return int(_coset_union(m)[2 * t]) if t else 0


def bch_for(ber: float, cfg: MediumConfig) -> tuple[int, int, int, int] | None:
    """(data bits k, codeword bits n, t, field m) of the BCH code with the highest rate k/n,
    over the block sizes and fields tried, whose block failure at bit-error rate ``ber`` is
    below the target; None if none has one."""
    best = None
    for k in cfg.block_bits:
        for m in (m for m in BCH_FIELDS if k < 2 ** m - 1):
            n = k + _coset_union(m)[::2]            # codeword bits at t = 0, 1, 2, ...
            t = np.arange(n.size)[n <= 2 ** m - 1]
            ok = t[stats.binom.sf(t, n[t], ber) <= cfg.target_block_failure]
            if ok.size and (best is None or k / n[ok[0]] > best[0] / best[1]):
                best = (k, int(n[ok[0]]), int(ok[0]), m)
    return best


def run_code(errors: np.ndarray, n: int, t: int, m: int, seed: int = 0) -> dict[str, int]:
    """Encode random blocks with BCH(t) over GF(2^m), flip the measured error pattern onto
    them in order, decode: blocks that came back wrong. Beyond ``bchlib``'s t = 64, a block
    decodes when it holds at most t errors (bounded-distance decoding)."""
    blocks = errors.size // n
    if t == 0 or t > BCHLIB_MAX_T:
        per_block = errors[:blocks * n].reshape(blocks, n).sum(axis=1)
        return {"blocks": int(blocks), "blocks_failed": int((per_block > t).sum())}
    import bchlib

    bch = bchlib.BCH(t, m=m)
    k_bytes = (n - bch.ecc_bits) // 8
    rng = np.random.default_rng(seed)
    blocks = failed = 0
    per = k_bytes * 8 + bch.ecc_bits
    for i in range(errors.size // per):
        data = bytearray(rng.integers(0, 256, k_bytes, dtype=np.uint8).tobytes())
        ecc = bytearray(bch.encode(data))
        flips = np.packbits(errors[i * per:(i + 1) * per])
        got = bytearray(np.frombuffer(bytes(data), np.uint8) ^ flips[:k_bytes])
        got_ecc = bytearray(np.frombuffer(bytes(ecc), np.uint8) ^ flips[k_bytes:k_bytes + len(ecc)])
        nerr = bch.decode(got, got_ecc)
        if nerr >= 0:
            bch.correct(got, got_ecc)
        blocks += 1
        failed += int(nerr < 0 or got != data)
    return {"blocks": blocks, "blocks_failed": failed}


@dataclass
class Medium:
    """The cheapest error-free digital storage measured on the chip."""

    bits_per_cell: int
    raw_ber: float
    raw_ber_upper95: float
    code: str
    codeword_bits: int
    data_bits: int
    cells_per_bit: float
    blocks_decoded: int
    blocks_failed: int
    densities: list[dict[str, Any]]
    target_met: bool = True  # False: no code could be shown to reach the target; the strongest is used

    def cells(self, bits: float) -> float:
        """Cells that store ``bits`` data bits with their code."""
        return bits * self.cells_per_bit

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(per_density: list[dict[str, Any]], cfg: MediumConfig) -> Medium:
    """The density and code with the fewest cells per data bit (then run on as many whole
    blocks as that density's measured errors fill); when the measurement cannot
    show that any code reaches the target (too few cells, too many errors), the strongest
    code (the largest t on the smallest block) at the least error-prone density, flagged
    ``target_met=False``."""
    best = None
    rows = []
    for r in per_density:
        sized = bch_for(r["raw_ber_upper95"], cfg)
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        if sized is None:
            row.update(usable=False)
            rows.append(row)
            continue
        k, n, t, m = sized
        cells_per_bit = n / (k * r["bits_per_cell"])
        row.update(usable=True, data_bits=k, codeword_bits=n, t=t, field_bits=m, cells_per_bit=cells_per_bit)
        rows.append(row)
        if best is None or cells_per_bit < best[0]:
            best = (cells_per_bit, r, k, n, t, m)
    target_met = best is not None
    if best is None:  # the sample cannot show any code reaches the target: the strongest code, flagged
        r = min(per_density, key=lambda x: x["raw_ber_upper95"] / x["bits_per_cell"])
        k, m = min(cfg.block_bits), BCH_FIELDS[0]
        t = max(t for t in range(2 ** (m - 1)) if k + bch_parity_bits(m, t) <= 2 ** m - 1)
        n = k + bch_parity_bits(m, t)
        best = (n / (k * r["bits_per_cell"]), r, k, n, t, m)
    cells_per_bit, r, k, n, t, m = best
    check = run_code(r["_errors"], n, t, m, seed=cfg.seed)
    name = f"BCH(n={n}, k={k}, t={t}) over GF(2^{m})" if t else "none (no error measured)"
    return Medium(r["bits_per_cell"], r["raw_ber"], r["raw_ber_upper95"], name, n, k, cells_per_bit,
                  check["blocks"], check["blocks_failed"], rows, target_met)


def predicted(noise: NoiseModel, g_hi_us: float, retention_s: float, cfg: MediumConfig, seed: int = 0) -> Medium:
    """The medium the evaluation stage would measure, drawn from the noise model before any
    pulse: the same test pattern, read after the retention time, decoded and sized the same way."""
    pat = pattern(noise, g_hi_us, cfg, retention_s)
    reads, _ = simulate_reads(noise, pat.aims_us, pat.tolerance_us, pat.max_pulses, retention_s,
                              np.random.default_rng(seed))
    return choose(decode(pat, reads, cfg), cfg)


def slc_ecc_cells(bits: float) -> float:
    """The textbook reference medium: 1 bit per cell with SECDED (72,64)."""
    return bits * 72 / 64
