"""Stage 6 of the store job, read-back: read the cells, compensate drift with the reference
cells, decode the weights, re-estimate batch-norm statistics; and the same chain on
noise-model draws instead of a chip (``predicted_accuracy``)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from pcm_hil_noisemodel import NoiseModel

from .. import coding
from ..coding import CodeConfig
from ..datasets import Split
from ..models import accuracy, batchnorms, recalibrate_batchnorm
from . import digital_parameters
from .layout import Layout


@dataclass(frozen=True)
class ReadbackConfig:
    """What the read-back stage reads."""

    bn_samples: int = 1000  # training inputs that re-estimate batch-norm statistics (0: off)
    drift_compensation: bool = True  # correct reads with the reference cells (off: an ablation)
    seed: int = 0           # which inputs

    def __post_init__(self) -> None:
        if type(self.bn_samples) is not int or not 0 <= self.bn_samples <= 100_000:
            raise ValueError(f"bn_samples must be an integer in [0, 100000], got {self.bn_samples!r}")


def compensated(reads: np.ndarray, layout: Layout, cfg: ReadbackConfig) -> tuple[np.ndarray, dict]:
    """``reads`` (layout order) corrected with the layout's reference cells, unless the
    configuration switches drift compensation off."""
    ref = layout.reference
    if not cfg.drift_compensation:
        return reads, {"off": True}
    return compensate(reads, layout.targets[ref], reads[ref])


def compensate(reads: np.ndarray, ref_targets: np.ndarray, ref_reads: np.ndarray) -> tuple[np.ndarray, dict]:
    """Drift compensation from reference cells: a gain α(G) per reference level, interpolated in G."""
    levels = np.unique(ref_targets)
    med_read = np.array([np.median(ref_reads[ref_targets == lv]) for lv in levels])
    alpha = levels / med_read
    order = np.argsort(med_read)
    a = np.interp(reads, med_read[order], alpha[order])
    return reads * a, {"levels_us": levels.tolist(), "median_read_us": med_read.tolist(), "alpha": alpha.tolist()}


def decode_model(model: nn.Module, names: list[str], encoded: list[coding.EncodedTensor], code: CodeConfig,
                 reads: np.ndarray, tensor_of: np.ndarray, trusted: np.ndarray | None = None,
                 raw: np.ndarray | None = None) -> nn.Module:
    """A copy of ``model`` with its stored tensors decoded from ``reads`` (cells in layout
    order); ``trusted`` marks the cells that verified (see :func:`coding.decode`); ``raw``:
    the reads before drift compensation, which a mask in the cells is decided on (the
    compensation gain below the lowest reference level would scale up the RESET cells'
    noise). The parameters kept digital are rounded to their stored precision."""
    out = digital_parameters.as_stored(copy.deepcopy(model), names)
    p = dict(out.named_parameters())
    trusted = np.ones(reads.size, bool) if trusted is None else np.asarray(trusted, bool)
    with torch.no_grad():
        for k, (n, enc) in enumerate(zip(names, encoded)):
            sel = tensor_of == k
            w = coding.decode(enc, reads[sel], code, trusted[sel], None if raw is None else raw[sel])
            p[n].copy_(torch.from_numpy(w.astype(np.float32)))
    return out


def bn_recalibrated(model: nn.Module, train: Split, cfg: ReadbackConfig) -> nn.Module:
    """``model`` with its batch-norm statistics re-estimated from ``cfg.bn_samples`` training
    inputs (a fixed subset); unchanged without BN layers or with 0."""
    if cfg.bn_samples:
        recalibrate_batchnorm(model, train.subset(min(cfg.bn_samples, len(train)), seed=cfg.seed).x)
    return model


@dataclass
class ReadBack:
    """What read-back measured, and the decoded network."""

    figures: dict[str, Any]
    decoded: nn.Module
    corrected_us: np.ndarray


def evaluate_reads(reads: np.ndarray, model: nn.Module, names: list[str], layout: Layout, code: CodeConfig,
                   trusted: np.ndarray | None, train: Split, test: Split, cfg: ReadbackConfig,
                   val: Split | None = None, diagnostics: bool = True) -> ReadBack:
    """Compensate, decode and score reads of every cell of ``layout`` (µS, layout order), on
    the test set (and on the validation split ``val``, which chooses settings). With
    ``diagnostics``, also what each decoding step bought (accuracy without drift
    compensation, without the verify flags, without BN re-estimation): three more test
    passes, which the repeat programmings of an evaluation skip."""
    ref = layout.reference
    corrected, comp = compensated(reads, layout, cfg)
    decoded = decode_model(model, names, layout.encoded, code, corrected, layout.tensor_of, trusted, reads)
    out: dict[str, Any] = {}
    if cfg.bn_samples and batchnorms(decoded):
        if diagnostics:
            out["accuracy_stored_without_bn_recalibration"] = accuracy(decoded, test.x, test.y)
        bn_recalibrated(decoded, train, cfg)
    out["accuracy_stored"] = accuracy(decoded, test.x, test.y)
    if val is not None:
        out["accuracy_stored_val"] = accuracy(decoded, val.x, val.y)
    if diagnostics:
        raw = decode_model(model, names, layout.encoded, code, reads, layout.tensor_of, trusted)
        every = decode_model(model, names, layout.encoded, code, corrected, layout.tensor_of, raw=reads)
        out["accuracy_stored_uncompensated"] = accuracy(raw, test.x, test.y)
        out["accuracy_stored_all_replicas"] = accuracy(every, test.x, test.y)
    out["drift_compensation"] = comp
    if any(e.mask_in_cells for e in layout.encoded):
        out["mask_decoding"] = mask_decoding(layout, reads, trusted)
    err = corrected[~ref] - layout.targets[~ref]
    out["error_us"] = {"rms": float(np.sqrt(np.mean(err ** 2))), "p50_abs": float(np.median(np.abs(err))),
                       "p99_abs": float(np.percentile(np.abs(err), 99))}
    return ReadBack(out, decoded, corrected)


def mask_decoding(layout: Layout, reads: np.ndarray, trusted: np.ndarray | None) -> dict[str, int]:
    """Decoding errors of the masks in the cells (:func:`coding.mask_errors`) on the raw
    ``reads``, summed over tensors."""
    trusted = np.ones(reads.size, bool) if trusted is None else np.asarray(trusted, bool)
    total: dict[str, int] = {}
    for k, enc in enumerate(layout.encoded):
        if enc.mask_in_cells:
            sel = layout.tensor_of == k
            for key, v in coding.mask_errors(enc, reads[sel], trusted[sel]).items():
                total[key] = total.get(key, 0) + v
    return total


def simulate_reads(noise: NoiseModel, aim_us: np.ndarray, tolerance_us: np.ndarray, max_pulses: np.ndarray,
                   retention_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """What the chip's part of a store gives, drawn from the noise model instead (no chip):
    reads ``retention_s`` after program-and-verify of cells pointed at ``aim_us`` with each
    cell's own tolerance and cap (an allocation :class:`~.allocation.Plan`'s arrays), and
    which cells verified. A cell aimed at the RESET floor (the plan's RESET-only cells) is
    only RESET: it reads the floor with read noise and drifts like the floor. A cell that
    did not verify is stuck with the calibrated probability, and a stuck cell does not drift
    (``NoiseModel.sample``'s ``stuck_hold``)."""
    aim = np.asarray(aim_us, float)
    tol = np.broadcast_to(np.asarray(tolerance_us, float), aim.shape)
    cap = np.broadcast_to(np.asarray(max_pulses), aim.shape)
    reads, verified = np.empty(aim.size), np.ones(aim.size, bool)
    floor = noise.window_.g_floor_us
    at_floor = aim <= floor
    for t, c in sorted(set(zip(tol[~at_floor].tolist(), cap[~at_floor].tolist()))):
        m = ~at_floor & (tol == t) & (cap == c)
        reads[m], verified[m] = noise.sample(aim[m], t, int(c), elapsed_s=retention_s, seed=rng,
                                             return_converged=True, stuck_hold=True)
    if at_floor.any():
        n = int(at_floor.sum())
        read_sd = noise.read_sigma(floor) * noise.n_avg_ ** -noise.read_noise_.averaging_exponent
        g = floor + read_sd * rng.standard_normal(n)
        ell = np.log(max(retention_s, noise.t0_s_) / noise.t0_s_)
        nu = np.abs(noise.nu_mean(floor) + noise.nu_std(floor) * rng.standard_normal(n))
        reads[at_floor] = g * np.exp(-nu * ell)
    return reads, verified


def decoded_from_reads(reads: np.ndarray, model: nn.Module, names: list[str], layout: Layout, code: CodeConfig,
                       trusted: np.ndarray | None, train: Split, cfg: ReadbackConfig) -> nn.Module:
    """The network :func:`evaluate_reads` scores: reads compensated with the reference cells,
    decoded from the trusted replicas, batch-norm statistics re-estimated."""
    corrected, _ = compensated(reads, layout, cfg)
    decoded = decode_model(model, names, layout.encoded, code, corrected, layout.tensor_of, trusted, reads)
    return bn_recalibrated(decoded, train, cfg) if batchnorms(decoded) else decoded


def simulated_readbacks(noise: NoiseModel, aim_us: np.ndarray, tolerance_us: np.ndarray | float,
                        max_pulses: np.ndarray | int, retention_s: float, layout: Layout, model: nn.Module,
                        names: list[str], code: CodeConfig, train: Split, cfg: ReadbackConfig,
                        rng: np.random.Generator, draws: int = 1) -> Iterator[tuple[nn.Module, np.ndarray]]:
    """``draws`` programmings of ``layout`` drawn from the noise model (:func:`simulate_reads`
    with each cell's aim, tolerance and cap), each read back as the store job reads
    (:func:`decoded_from_reads`): (decoded network, verified cells) per draw. The planner,
    the replica choice and :func:`predicted_accuracy` all score these."""
    for _ in range(draws):
        reads, verified = simulate_reads(noise, aim_us, tolerance_us, max_pulses, retention_s, rng)
        yield decoded_from_reads(reads, model, names, layout, code, verified, train, cfg), verified


def predicted_accuracy(noise: NoiseModel, layout: Layout, model: nn.Module, names: list[str], code: CodeConfig,
                       train: Split, test: Split, cfg: ReadbackConfig, retention_s: float,
                       tolerance_us: float, max_pulses: int, seed: int = 0, draws: int = 3) -> float:
    """Accuracy after ``retention_s`` predicted by the noise model (no chip): the mean over
    ``draws`` simulated programmings of every cell at one setting (one scatters by ±0.3 pp)."""
    # as the allocation plans them: a target within half the window of the floor is only RESET
    floor = noise.window_.g_floor_us
    aim = np.where(layout.targets <= floor + 0.5 * tolerance_us, floor, noise.aim(layout.targets, tolerance_us))
    runs = simulated_readbacks(noise, aim, tolerance_us, max_pulses, retention_s, layout, model, names, code, train,
                               cfg, np.random.default_rng(seed), draws)
    return float(np.mean([accuracy(decoded, test.x, test.y) for decoded, _ in runs]))
