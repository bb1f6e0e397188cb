"""The main job: store a trained model in the chip and read it back.

compress (prune + fine-tune) → importance (Fisher) → encode (code, scales) → allocate
program-and-verify effort (noise model, pulse budget) → program (with reference cells)
→ wait the retention time → read, compensate drift, decode → accuracy and honest cost.
The layout (which cell holds what) goes to the run store, so ``load_run`` can read the
model back from the chip later.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from pcm_hil_noisemodel import NoiseModel

from . import __version__, allocation, coding, cost, datasets
from .calibrate import chip_id
from .checkpoint import Interrupted, VerifyJournal, recording_outcome, wait_until
from .chip import Chip
from .coding import CodeConfig
from .compression import analog_parameters, prune_and_finetune, quantize
from .importance import importance as weight_importance
from .models import accuracy, batchnorms, load_model, load_state_dict, recalibrate_batchnorm, spec
from .program import VerifyConfig, program_verify
from .allocation import DEFAULT_CAPS
from .store import RunStore

Progress = Callable[[str, float, float], None]
REF_FRACTIONS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
DEFAULT_BUDGET_TOLERANCE_US = 2.0  # no --pulse-budget: what uniform ±this, cap 20 would spend


@dataclass(frozen=True)
class StoreConfig:
    """Everything the store job needs besides the chip and the noise model."""

    model: str = "lenet5-fmnist"
    checkpoint: str | None = None
    data_dir: str | None = None
    code: CodeConfig = field(default_factory=CodeConfig)
    sparsity: float = 0.0
    finetune_epochs: int = 3
    training_noise: float = 0.02
    importance: str = "fisher"
    importance_samples: int = 1000
    bn_samples: int = 1000  # training inputs that re-estimate batch-norm statistics after read-back (0: off)
    allocation: str = "importance"
    pulse_budget: float | None = None
    target_loss: float | None = None
    replicas_per_weight: float = 1.0
    max_replicas: int = 8
    retention_s: float = 86400.0
    seed: int = 0
    first_cell: int = 0
    reference_cells_per_level: int = 32
    g_hi_fraction: float = 1.0
    caps: tuple[int, ...] = DEFAULT_CAPS
    digital_baseline: bool = True
    checkpoint_s: float = 1.0

    def __post_init__(self) -> None:
        if self.allocation not in ("importance", "uniform"):
            raise ValueError(f"allocation must be 'importance' or 'uniform', got {self.allocation!r}")
        if not (math.isfinite(self.retention_s) and 0 <= self.retention_s <= 10 * 365 * 86400):
            raise ValueError(f"retention_s must be in [0, 10 years], got {self.retention_s!r}")
        if self.pulse_budget is not None and not (math.isfinite(self.pulse_budget) and self.pulse_budget > 0):
            raise ValueError(f"pulse_budget must be a positive number, got {self.pulse_budget!r}")
        if self.target_loss is not None and (self.allocation != "importance" or not self.target_loss > 0):
            raise ValueError("target_loss needs importance allocation and a positive value")
        if not 1.0 <= self.replicas_per_weight <= self.max_replicas:
            raise ValueError(f"replicas_per_weight must be in [1, {self.max_replicas}], got {self.replicas_per_weight!r}")
        if not 0 < self.g_hi_fraction <= 1:
            raise ValueError("g_hi_fraction must be in (0, 1]")
        if not (math.isfinite(self.checkpoint_s) and 0 <= self.checkpoint_s <= 3600):
            raise ValueError(f"checkpoint_s must be in [0, 3600] s, got {self.checkpoint_s!r}")
        if type(self.bn_samples) is not int or not 0 <= self.bn_samples <= 100_000:
            raise ValueError(f"bn_samples must be an integer in [0, 100000], got {self.bn_samples!r}")
        if not isinstance(self.first_cell, int) or self.first_cell < 0:
            raise ValueError("first_cell must be a non-negative integer")


@dataclass
class Prepared:
    """A model encoded for the chip, with its plan: everything decided before any pulse."""

    model: torch.nn.Module
    compressed: torch.nn.Module
    names: list[str]
    encoded: list[coding.EncodedTensor]
    targets: np.ndarray       # µS per cell (weights, then reference cells)
    weight_of: np.ndarray     # per cell: global weight index (−1 for reference cells)
    tensor_of: np.ndarray     # per cell: tensor index (−1 for reference cells)
    importance: np.ndarray    # per cell: F·gain² (0 for reference cells)
    plan: allocation.Plan
    side_bits: float
    test: datasets.Split
    train: datasets.Split
    accuracy_reference: float
    accuracy_compressed: float
    weight_imp: dict[str, np.ndarray] = field(default_factory=dict)
    tensor_side_bits: float = 0.0


def check_model(cfg: StoreConfig) -> None:
    """The model, its checkpoint and (for your own architecture) its data can be found:
    checked before anything else, so that a typo costs no calibration pulse."""
    load_model(cfg.model, cfg.checkpoint)
    if not spec(cfg.model).dataset and not (cfg.data_dir and Path(cfg.data_dir, "x_test.npy").exists()):
        raise ValueError(f"{cfg.model} is your own architecture: give --data-dir with x_test.npy and y_test.npy "
                         "(and x_train.npy, y_train.npy for fine-tuning and importance)")


def _dataset(cfg: StoreConfig) -> tuple[datasets.Split, datasets.Split]:
    if cfg.data_dir and Path(cfg.data_dir, "x_test.npy").exists():
        d = Path(cfg.data_dir)
        load = lambda n: np.load(d / n, allow_pickle=False)  # noqa: E731
        test = datasets.Split(load("x_test.npy").astype(np.float32), load("y_test.npy").astype(np.int64))
        if (d / "x_train.npy").exists():
            return datasets.Split(load("x_train.npy").astype(np.float32), load("y_train.npy").astype(np.int64)), test
        # no training data: fine-tune and estimate importance on one half, report accuracy on the
        # other, so that no accuracy is measured on data the model was tuned with
        idx = np.random.default_rng(0).permutation(len(test))
        half = len(test) // 2
        return (datasets.Split(test.x[idx[:half]], test.y[idx[:half]]),
                datasets.Split(test.x[idx[half:]], test.y[idx[half:]]))
    return datasets.load(spec(cfg.model).dataset, cfg.data_dir)


def prepare(cfg: StoreConfig, noise: NoiseModel, n_cells: int, progress: Progress) -> Prepared:
    """Everything up to the first pulse; raises ValueError on bad input before touching a chip."""
    progress("prepare", 0, 4)
    check_model(cfg)
    model = load_model(cfg.model, cfg.checkpoint)
    train, test = _dataset(cfg)
    names = analog_parameters(model)
    params = dict(model.named_parameters())
    for n in names:
        if not torch.isfinite(params[n]).all():
            raise ValueError(f"model weights {n} hold NaN or infinite values")
    acc_ref = accuracy(model, test.x, test.y)
    compressed, masks = prune_and_finetune(model, names, cfg.sparsity, train.x, train.y, cfg.finetune_epochs,
                                           seed=cfg.seed, noise=cfg.training_noise)
    if cfg.code.code == "multilevel":
        compressed = _quantized_copy(compressed, names, cfg.code.levels)
    acc_comp = accuracy(compressed, test.x, test.y)
    progress("prepare", 1, 4)
    cal = train.subset(min(cfg.importance_samples, len(train)), seed=cfg.seed)
    imp = weight_importance(compressed, names, cal.x, cal.y, cfg.importance)
    progress("prepare", 2, 4)
    g_hi = cfg.g_hi_fraction * noise.levels_us_[-1]
    masks_used = masks if cfg.sparsity > 0 else None
    encoded, targets, weight_of, tensor_of, cell_imp, side = _encode(cfg, noise, compressed, names, masks_used, imp, g_hi)
    tensor_side = side
    other = sum(p.numel() for n, p in model.state_dict().items() if n not in names and p.dtype.is_floating_point)
    side += 32 * other
    if cfg.first_cell + targets.size > n_cells:
        raise ValueError(f"the model needs {targets.size} cells from cell {cfg.first_cell}; "
                         f"the chip has {n_cells} cells")
    table = allocation.tables(noise, targets, allocation.options(noise, cfg.caps))
    opts = table.options
    ref_rows = tensor_of < 0
    # reference cells always get the tightest, longest setting: they calibrate every other read
    tight = min(range(len(opts)), key=lambda i: (opts[i][0], -opts[i][1]))
    pulses_ref = table.pulses[ref_rows, tight].sum()
    cells = table[~ref_rows]
    budget = cfg.pulse_budget
    if budget is None:  # default: what uniform ±DEFAULT_BUDGET_TOLERANCE_US, cap 20 would spend
        mid = min(range(len(opts)), key=lambda i: (abs(opts[i][0] - DEFAULT_BUDGET_TOLERANCE_US), abs(opts[i][1] - 20)))
        budget = float(cells.pulses[:, mid].sum()) + pulses_ref
    if budget - pulses_ref < cells.minimum_pulses():
        raise ValueError(f"pulse budget {budget:.0f} is too small: programming every cell once needs at least "
                         f"{cells.minimum_pulses() + pulses_ref:.0f} pulses")
    if cfg.target_loss is not None:  # ½·Σ F·E[e²] (loss units) instead of a pulse budget
        wplan = allocation.allocate_for_loss(cell_imp[~ref_rows], cells, cfg.target_loss)
    else:
        pick = allocation.allocate if cfg.allocation == "importance" else allocation.uniform
        wplan = pick(cell_imp[~ref_rows], cells, budget - pulses_ref)
    choice = np.full(targets.size, tight)
    choice[~ref_rows] = wplan.choice
    plan = table.plan(choice, wplan.lagrange)
    progress("prepare", 4, 4)
    return Prepared(model, compressed, names, encoded, targets, weight_of, tensor_of, cell_imp, plan, side,
                    test, train, acc_ref, acc_comp, imp, tensor_side)


def _encode(cfg: StoreConfig, noise: NoiseModel, compressed: torch.nn.Module, names: list[str],
            masks: dict[str, np.ndarray] | None, imp: dict[str, np.ndarray], g_hi: float) -> tuple:
    """Cells of every analog tensor plus the reference cells: (encoded, targets, weight_of,
    tensor_of, importance per cell, side bits of the tensors)."""
    cparams = dict(compressed.named_parameters())
    tensors = {n: cparams[n].detach().numpy() for n in names}
    replicas = _replicas(cfg, noise, g_hi, tensors, masks, imp)
    encoded, targets, weight_of, tensor_of, cell_imp = [], [], [], [], []
    side = 0.0
    for k, n in enumerate(names):
        enc = coding.encode(n, tensors[n], cfg.code, g_hi, None if masks is None else masks[n], replicas[n])
        encoded.append(enc)
        kept = np.flatnonzero(enc.mask.ravel()) if enc.mask is not None else np.arange(enc.weights)
        targets.append(enc.targets_us)
        weight_of.append(kept[enc.owner])
        tensor_of.append(np.full(enc.cells, k))
        cell_imp.append(imp[n].ravel()[kept][enc.owner] * enc.gains ** 2)
        side += sum(coding.side_bits(enc, cfg.code).values())
    ref = np.repeat(np.array(REF_FRACTIONS) * g_hi, cfg.reference_cells_per_level)
    return (encoded, np.concatenate([*targets, ref]), np.concatenate([*weight_of, np.full(ref.size, -1)]),
            np.concatenate([*tensor_of, np.full(ref.size, -1)]), np.concatenate([*cell_imp, np.zeros(ref.size)]), side)


def accuracy_curve(prep: Prepared, cfg: StoreConfig, noise: NoiseModel, replicas=(1.0, 1.25, 1.5, 2.0, 3.0),
                   seed: int = 0, draws: int = 3) -> list[dict[str, float]]:
    """Predicted accuracy after the retention time versus total cells per weight, by simulating
    the calibrated noise model (no chip) for several replica budgets; the mean of ``draws``
    realizations (one scatters by about ±0.3 pp)."""
    out = []
    g_hi = cfg.g_hi_fraction * noise.levels_us_[-1]
    masks = {e.name: e.mask for e in prep.encoded} if cfg.sparsity > 0 else None
    tol, cap = (0.5 if 0.5 in noise.tolerances_us_ else noise.tolerances_us_[0]), min(20, noise.max_pulses_)
    for r in replicas:
        if r > 1 and not cfg.code.replicable:
            continue
        c = replace(cfg, replicas_per_weight=r)
        enc, targets, _, tensor_of, _, side = _encode(c, noise, prep.compressed, prep.names, masks, prep.weight_imp, g_hi)
        ref = tensor_of < 0
        rng = np.random.default_rng(seed)
        accs = []
        for _ in range(draws):
            reads = noise.sample(noise.aim(targets, tol), tol, cap, elapsed_s=cfg.retention_s, seed=rng)
            corr, _ = compensate(reads, targets[ref], reads[ref])
            accs.append(accuracy(_bn_recalibrated(decode_model(prep.compressed, prep.names, enc, cfg.code, corr,
                                                               tensor_of), prep.train, cfg),
                                 prep.test.x, prep.test.y))
        acc = float(np.mean(accs))
        total = targets.size + cost.mlc_cells(side + prep.side_bits - prep.tensor_side_bits)
        out.append({"replicas_per_weight": r, "cells_per_weight": total / sum(e.weights for e in enc),
                    "accuracy_predicted": acc})
    return out


def _replicas(cfg: StoreConfig, noise: NoiseModel, g_hi: float, tensors: dict[str, np.ndarray],
              masks: dict[str, np.ndarray] | None, imp: dict[str, np.ndarray]) -> dict[str, np.ndarray | int]:
    """Replicas per kept weight: uniform, or by importance × predicted error after retention."""
    if not cfg.code.replicable or cfg.replicas_per_weight == 1.0:
        return {n: cfg.code.redundancy if cfg.code.replicable else 1 for n in tensors}
    weight, var, sizes = [], [], []
    for n, w in tensors.items():
        v = coding.kept_values(w, None if masks is None else masks[n])
        s = coding.scale_of(v, cfg.code, g_hi)
        span = g_hi / 2 if cfg.code.code == "offset" else g_hi
        a = np.clip(v / s, -span, span)
        g = a + span if cfg.code.code == "offset" else np.abs(a)
        var.append(noise.sq_error_after(g, 0.5 if 0.5 in noise.tolerances_us_ else noise.tolerances_us_[0],
                                        min(20, noise.max_pulses_), cfg.retention_s))
        keep = imp[n].ravel() if masks is None else imp[n].ravel()[masks[n].ravel()]
        weight.append(keep * s ** 2)
        sizes.append(v.size)
    weight, var = np.concatenate(weight), np.concatenate(var)
    per = cfg.code.cells_per_replica
    r = allocation.replicas(weight, var, per, cfg.replicas_per_weight * weight.size * per, cfg.max_replicas)
    return dict(zip(tensors, np.split(r, np.cumsum(sizes)[:-1])))


def _quantized_copy(model: torch.nn.Module, names: list[str], levels: int) -> torch.nn.Module:
    """The model with |w| on ``levels`` equally spaced levels per tensor (what multilevel stores)."""
    import copy

    q = copy.deepcopy(model)
    p = dict(q.named_parameters())
    with torch.no_grad():
        for n in names:
            w = p[n].numpy()
            step = np.abs(w).max() / (levels - 1) if np.abs(w).max() > 0 else 1.0
            p[n].copy_(torch.from_numpy((np.sign(w) * np.round(np.abs(w) / step) * step).astype(np.float32)))
    return q


def decode_model(prep_model: torch.nn.Module, names: list[str], encoded: list[coding.EncodedTensor],
                 code: CodeConfig, reads: np.ndarray, tensor_of: np.ndarray,
                 trusted: np.ndarray | None = None) -> torch.nn.Module:
    """A copy of the model with its analog weights decoded from ``reads`` (cells in layout
    order); ``trusted`` marks the cells that verified (see :func:`coding.decode`)."""
    import copy

    out = copy.deepcopy(prep_model)
    p = dict(out.named_parameters())
    trusted = np.ones(reads.size, bool) if trusted is None else np.asarray(trusted, bool)
    with torch.no_grad():
        for k, (n, enc) in enumerate(zip(names, encoded)):
            w = coding.decode(enc, reads[tensor_of == k], code, trusted[tensor_of == k])
            p[n].copy_(torch.from_numpy(w.astype(np.float32)))
    return out


def _bn_recalibrated(model: torch.nn.Module, train: datasets.Split, cfg: StoreConfig) -> torch.nn.Module:
    """``model`` with its batch-norm statistics re-estimated from ``cfg.bn_samples`` training
    inputs (a fixed subset), as read-back does; unchanged without BN layers or with 0."""
    if cfg.bn_samples:
        recalibrate_batchnorm(model, train.subset(min(cfg.bn_samples, len(train)), seed=cfg.seed).x)
    return model


def compensate(reads: np.ndarray, ref_targets: np.ndarray, ref_reads: np.ndarray) -> tuple[np.ndarray, dict]:
    """Drift compensation from reference cells: a gain α(G) per reference level, interpolated in G."""
    levels = np.unique(ref_targets)
    med_read = np.array([np.median(ref_reads[ref_targets == lv]) for lv in levels])
    alpha = levels / med_read
    order = np.argsort(med_read)
    a = np.interp(reads, med_read[order], alpha[order])
    return reads * a, {"levels_us": levels.tolist(), "median_read_us": med_read.tolist(), "alpha": alpha.tolist()}


def run_store_job(chip: Chip, noise: NoiseModel, store: RunStore, cfg: StoreConfig, run_dir: str | Path,
                  progress: Progress | None = None, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Store ``cfg.model`` on ``chip``; returns the result record (also saved in the run store).

    The run checkpoints as it goes (layout, per-cell program-and-verify state, programmed
    table, read-back); :func:`resume_store_job` continues it after a kill. ``stop()`` is
    polled between transactions; when it returns True the run ends with
    :class:`~pcm_hil.checkpoint.Interrupted`, resumable.
    """
    report = progress or (lambda stage, done, total: None)
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    prep = prepare(cfg, noise, chip.geometry.n_cells, report)
    cells = np.arange(cfg.first_cell, cfg.first_cell + prep.targets.size, dtype=np.int64)
    vcfg = replace(VerifyConfig.measured_with(noise), max_pulses=int(prep.plan.max_pulses.max()))
    settings = {"procedure": "store", "software": f"pcm-hil {__version__}", "chip": chip.identity(),
                "chip_id": chip_id(chip), "config": asdict(cfg), "verify": asdict(vcfg),
                "noise_model": noise.provenance,
                "tensors": [{"name": e.name, "shape": list(e.shape), "scale": e.scale, "g_hi": e.g_hi}
                            for e in prep.encoded]}
    run_id = store.create_run("store", settings)
    with recording_outcome(store, run_id):
        _attach_state_file(chip, run_dir, run_id)
        noise.save(Path(run_dir) / f"{run_id}-noise.json")
        _write_layout(store, run_id, prep, cells, run_dir)
    return _program_and_read(chip, noise, store, cfg, run_id, prep, cells, vcfg, report, stop, t_start, False)


def resume_store_job(chip: Chip, store: RunStore, run_id: str, run_dir: str | Path,
                     progress: Progress | None = None, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Continue a store run that was killed or stopped: cells already verified are not
    pulsed again, cells in flight are re-verified first, finished stages are skipped."""
    report = progress or (lambda stage, done, total: None)
    t_start = time.monotonic()
    info = store.run(run_id)
    if info["kind"] == "store" and info["settings"].get("chip_id") not in (None, chip_id(chip)):
        raise ValueError(f"run {run_id} was stored on {info['settings']['chip_id']!r}, not on this chip "
                         f"({chip_id(chip)!r})")
    store.resume_run(run_id, "store")
    with recording_outcome(store, run_id):
        if "layout" not in store.stages(run_id):
            raise ValueError(f"run {run_id} stopped before its layout was written, so nothing was programmed: "
                             "start a new run instead")
        noise = NoiseModel.load(Path(run_dir) / f"{run_id}-noise.json")
        cfg, prep = _restore(store, run_id, run_dir, noise, info)
        vcfg = VerifyConfig(**info["settings"]["verify"])
        cells = store.read(run_id, "layout")["cell"].to_numpy(np.int64)
        _attach_state_file(chip, run_dir, run_id)
    return _program_and_read(chip, noise, store, cfg, run_id, prep, cells, vcfg, report, stop, t_start, True)


def _attach_state_file(chip: Chip, run_dir: str | Path, run_id: str) -> None:
    """An emulated chip saves itself next to the run at every checkpoint (cells are non-volatile)."""
    if hasattr(chip, "state_file"):
        chip.state_file = Path(run_dir) / f"{run_id}-chip.npz"
        chip.sync()


def _program_and_read(chip: Chip, noise: NoiseModel, store: RunStore, cfg: StoreConfig, run_id: str,
                      prep: Prepared, cells: np.ndarray, vcfg: VerifyConfig, report: Progress,
                      stop: Callable[[], bool] | None, t_start: float, resumed: bool) -> dict[str, Any]:
    with recording_outcome(store, run_id):
        stages = store.stages(run_id)
        if "programmed" not in stages:
            journal = VerifyJournal(store, run_id, "program", cells, every_s=cfg.checkpoint_s, sync=chip.sync)
            state = journal.load()
            res = program_verify(chip, cells, prep.plan.aim_us, vcfg, tolerance_us=prep.plan.tolerance_us,
                                 max_pulses=prep.plan.max_pulses, progress=lambda d, t: report("program", d, t),
                                 state=state, checkpoint=journal, stop=stop)
            if res.stop_reason == "interrupted":
                raise Interrupted(run_id, "program-and-verify")
            chip.sync()
            store.append(run_id, "programmed", pd.DataFrame({
                "cell": cells, "final_us": res.final_us, "pulses": res.pulses, "resets": res.resets,
                "converged": res.converged.astype(np.int64), "t_read_s": res.state.t_read_s}),
                stage="programmed", info={"t_chip_s": chip.now()})
        t_programmed = store.stages(run_id)["programmed"]["t_chip_s"]
        _wait_until(chip, t_programmed + cfg.retention_s, stop, run_id, report)
        prog = store.read(run_id, "programmed")
        result = _read_back(chip, store, run_id, prep, cfg, cells, vcfg.n_avg, prog["converged"].to_numpy(bool))
        set_pulses, resets = int(prog["pulses"].sum()), int(prog["resets"].sum())
        result.update(
            run_id=run_id, model=cfg.model, weights=int(sum(e.weights for e in prep.encoded)),
            cells=int(cells.size), retention_s=cfg.retention_s, pulses=set_pulses + resets + int(cells.size),
            pulses_planned=prep.plan.pulses, set_pulses=set_pulses, resets=resets + int(cells.size),
            code=coding.describe(cfg.code), allocation=cfg.allocation, sparsity=cfg.sparsity,
            accuracy_reference=prep.accuracy_reference, accuracy_compressed=prep.accuracy_compressed, resumed=resumed)
        result["yield"] = float(prog["converged"].mean())
        _costs(result, prep, cfg)
        report("accuracy curve", 0, 1)
        result["accuracy_curve"] = accuracy_curve(prep, cfg, noise, seed=cfg.seed)
        result["seconds"] = time.monotonic() - t_start
        if hasattr(chip, "state_file"):
            chip.sync()
            result["chip_state"] = str(chip.state_file)
    store.finish(run_id, result={k: v for k, v in result.items() if not k.startswith("_")})
    return result


def _wait_until(chip: Chip, t_chip_s: float, stop: Callable[[], bool] | None, run_id: str, report: Progress) -> None:
    """Wait (by the chip's clock) until ``t_chip_s``, showing progress, honouring a stop request."""
    total = max(0.0, t_chip_s - chip.now())

    def between(now: float) -> None:
        if stop is not None and stop():
            raise Interrupted(run_id, "retention wait")
        report("retention", total - max(0.0, t_chip_s - now), total)

    wait_until(chip, t_chip_s, between)


def _write_layout(store: RunStore, run_id: str, prep: Prepared, cells: np.ndarray, run_dir: str | Path) -> None:
    """Everything a later ``load`` or ``--resume`` needs, written before the first pulse; the
    ``layout`` stage is marked in the same transaction as the layout table."""
    digital = {n: t.detach().clone() for n, t in prep.compressed.state_dict().items() if n not in prep.names}
    _save_torch(digital, Path(run_dir) / f"{run_id}-digital.pt")
    _save_torch(prep.compressed.state_dict(), Path(run_dir) / f"{run_id}-compressed.pt")
    rows = []
    for k, enc in enumerate(prep.encoded):
        keep = enc.mask.ravel() if enc.mask is not None else np.ones(enc.weights, bool)
        neg = np.zeros(enc.weights, bool)
        reps = np.zeros(enc.weights, np.int64)
        reps[keep] = enc.replicas
        if enc.signs is not None:
            neg[keep] = enc.signs
        rows.append(pd.DataFrame({"tensor": k, "weight_index": np.arange(enc.weights), "keep": keep.astype(np.int64),
                                  "negative": neg.astype(np.int64), "replicas": reps}))
    store.append(run_id, "side", pd.concat(rows, ignore_index=True))
    n_ref = int((prep.tensor_of < 0).sum())
    owner = np.concatenate([e.owner for e in prep.encoded] + [np.full(n_ref, -1)])
    role = np.concatenate([e.role for e in prep.encoded] + [np.full(n_ref, -1)])
    gain = np.concatenate([e.gains for e in prep.encoded] + [np.ones(n_ref)])
    store.append(run_id, "layout", pd.DataFrame({
        "cell": cells, "tensor": prep.tensor_of, "weight": prep.weight_of, "owner": owner, "role": role.astype(np.int64),
        "gain": gain, "target_us": prep.targets, "importance": prep.importance, "tolerance_us": prep.plan.tolerance_us,
        "max_pulses": prep.plan.max_pulses, "expected_pulses": prep.plan.expected_pulses,
        "expected_sq_error_us2": prep.plan.expected_sq_error, "aim_us": prep.plan.aim_us}),
        stage="layout", info={"accuracy_reference": prep.accuracy_reference,
                              "accuracy_compressed": prep.accuracy_compressed, "side_bits": prep.side_bits,
                              "tensor_side_bits": prep.tensor_side_bits, "lagrange": prep.plan.lagrange})


def _save_torch(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _read_back(chip: Chip, store: RunStore, run_id: str, prep: Prepared, cfg: StoreConfig, cells: np.ndarray,
               n_avg: int, trusted: np.ndarray) -> dict[str, Any]:
    report = {}
    ref = prep.tensor_of < 0
    done = "readback" in store.stages(run_id)  # read before a kill: the reads are kept, not repeated
    if done:
        reads = store.read(run_id, "readback")["read_us"].to_numpy(np.float64)
    else:
        reads = chip.read(cells, n_avg=n_avg).astype(np.float64)
    corrected, comp = compensate(reads, prep.targets[ref], reads[ref])
    if not done:
        store.append(run_id, "readback", pd.DataFrame({"cell": cells, "read_us": reads, "corrected_us": corrected,
                                                       "t_chip_s": chip.now()}), stage="readback")
    decoded = decode_model(prep.compressed, prep.names, prep.encoded, cfg.code, corrected, prep.tensor_of, trusted)
    raw = decode_model(prep.compressed, prep.names, prep.encoded, cfg.code, reads, prep.tensor_of, trusted)
    every = decode_model(prep.compressed, prep.names, prep.encoded, cfg.code, corrected, prep.tensor_of)
    if cfg.bn_samples and batchnorms(decoded):
        report["accuracy_stored_without_bn_recalibration"] = accuracy(decoded, prep.test.x, prep.test.y)
        _bn_recalibrated(decoded, prep.train, cfg)
    report["accuracy_stored"] = accuracy(decoded, prep.test.x, prep.test.y)
    report["accuracy_stored_uncompensated"] = accuracy(raw, prep.test.x, prep.test.y)
    report["accuracy_stored_all_replicas"] = accuracy(every, prep.test.x, prep.test.y)
    report["drift_compensation"] = comp
    err = corrected[~ref] - prep.targets[~ref]
    report["error_us"] = {"rms": float(np.sqrt(np.mean(err ** 2))), "p50_abs": float(np.median(np.abs(err))),
                          "p99_abs": float(np.percentile(np.abs(err), 99))}
    report["_decoded"] = decoded
    gain = np.concatenate([e.gains for e in prep.encoded])
    report["_cells"] = {"importance": prep.importance[~ref], "error_weight": err * gain,
                        "tolerance_us": prep.plan.tolerance_us[~ref]}
    return report


def _costs(result: dict[str, Any], prep: Prepared, cfg: StoreConfig) -> None:
    weights = result["weights"]
    names = prep.names
    other = sum(p.numel() for n, p in prep.model.state_dict().items() if n not in names and p.dtype.is_floating_point)
    nnz = int(sum(e.kept for e in prep.encoded))
    bits_c = cfg.code.levels.bit_length() if cfg.code.code == "multilevel" else 32
    compressed_bits = cost.digital_bits(weights, nnz, bits_c, other, cfg.sparsity > 0, len(names))
    best = None
    tried: list = []
    if cfg.digital_baseline:
        best, tried = _best_digital(prep, cfg, weights, other, result["accuracy_stored"])
    summary = cost.summarize(result["cells"], prep.side_bits, weights, other, compressed_bits, best)
    result.update(summary)
    result["digital_cells"] = summary["digital_cells"]
    result["best_digital"] = cost.as_dict(best)
    result["digital_options_tried"] = [cost.as_dict(o) for o in tried]
    result["cells_per_weight"] = summary["total_cells"] / weights


def _best_digital(prep: Prepared, cfg: StoreConfig, weights: int, other: int, target: float):
    pruned = {0.0: prep.model}
    if cfg.sparsity > 0 and cfg.code.code != "multilevel" and cfg.training_noise == 0:
        pruned[cfg.sparsity] = prep.compressed  # the same pruning and fine-tuning, already done

    def evaluate(bits: int, sparsity: float) -> float:
        if sparsity not in pruned:
            pruned[sparsity] = prune_and_finetune(prep.model, prep.names, sparsity, prep.train.x, prep.train.y,
                                                  cfg.finetune_epochs, seed=cfg.seed)[0]
        import copy

        m = copy.deepcopy(pruned[sparsity])
        p = dict(m.named_parameters())
        with torch.no_grad():
            for n in prep.names:
                p[n].copy_(torch.from_numpy(quantize(p[n].numpy(), bits).astype(np.float32)))
        # the same read-time batch-norm re-estimation as the analog model gets, for a fair comparison
        return accuracy(_bn_recalibrated(m, prep.train, cfg), prep.test.x, prep.test.y)

    return cost.best_digital(evaluate, weights, other, len(prep.names), target)


def _config_of(info: dict[str, Any]) -> StoreConfig:
    cfg_d = dict(info["settings"]["config"])
    cfg_d["code"] = CodeConfig(**cfg_d["code"])
    cfg_d["caps"] = tuple(cfg_d["caps"])
    return StoreConfig(**cfg_d)


def _encoded_from_store(store: RunStore, run_id: str, info: dict[str, Any], cfg: StoreConfig
                        ) -> tuple[pd.DataFrame, list[coding.EncodedTensor]]:
    layout, side = store.read(run_id, "layout"), store.read(run_id, "side")
    if layout.empty or side.empty:
        raise ValueError(f"run {run_id} has no complete layout in the store")
    encoded = []
    for k, t in enumerate(info["settings"]["tensors"]):
        sd = side[side["tensor"] == k].sort_values("weight_index")
        lay = layout[layout["tensor"] == k]
        keep = sd["keep"].to_numpy(bool)
        encoded.append(coding.EncodedTensor(
            t["name"], tuple(t["shape"]), t["scale"], t["g_hi"], keep.reshape(t["shape"]) if cfg.sparsity > 0 else None,
            sd["negative"].to_numpy(bool)[keep] if cfg.code.sign_bits else None, sd["replicas"].to_numpy()[keep],
            lay["target_us"].to_numpy(), lay["owner"].to_numpy(), lay["role"].to_numpy(),
            lay["gain"].to_numpy() if "gain" in lay else np.ones(len(lay))))
    return layout, encoded


def _restore(store: RunStore, run_id: str, run_dir: str | Path, noise: NoiseModel, info: dict[str, Any]
             ) -> tuple[StoreConfig, Prepared]:
    """The run's :class:`Prepared` rebuilt from the store and its files (no re-training)."""
    cfg = _config_of(info)
    layout, encoded = _encoded_from_store(store, run_id, info, cfg)
    done = store.stages(run_id)["layout"]
    model = load_model(cfg.model, cfg.checkpoint)
    compressed = load_model(cfg.model, cfg.checkpoint)
    compressed.load_state_dict(load_state_dict(Path(run_dir) / f"{run_id}-compressed.pt"), strict=True)
    train, test = _dataset(cfg)
    names = analog_parameters(model)
    cal = train.subset(min(cfg.importance_samples, len(train)), seed=cfg.seed)
    imp = weight_importance(compressed, names, cal.x, cal.y, cfg.importance)
    n = len(layout)
    plan = allocation.Plan(layout["tolerance_us"].to_numpy(), layout["max_pulses"].to_numpy(np.int64),
                           layout["expected_pulses"].to_numpy(), layout["expected_sq_error_us2"].to_numpy(),
                           layout["aim_us"].to_numpy() if "aim_us" in layout else layout["target_us"].to_numpy(),
                           allocation.options(noise, cfg.caps), np.zeros(n, np.int64), done["lagrange"])
    prep = Prepared(model, compressed, names, encoded, layout["target_us"].to_numpy(), layout["weight"].to_numpy(),
                    layout["tensor"].to_numpy(), layout["importance"].to_numpy(), plan, done["side_bits"], test,
                    train, done["accuracy_reference"], done["accuracy_compressed"], imp, done["tensor_side_bits"])
    return cfg, prep


def load_run(chip: Chip, store: RunStore, run_id: str, run_dir: str | Path) -> dict[str, Any]:
    """Read a stored model back from the chip using the layout in the run store."""
    info = store.run(run_id)
    if info["kind"] != "store":
        raise ValueError(f"run {run_id} is a {info['kind']} run, not a stored model")
    s = info["settings"]
    cfg = _config_of(info)
    layout, encoded = _encoded_from_store(store, run_id, info, cfg)
    model = load_model(cfg.model, cfg.checkpoint)
    train, test = _dataset(cfg)
    names = analog_parameters(model)
    digital = load_state_dict(Path(run_dir) / f"{run_id}-digital.pt")
    model.load_state_dict({**model.state_dict(), **digital}, strict=True)
    cells = layout["cell"].to_numpy()
    tensor_of = layout["tensor"].to_numpy()
    reads = chip.read(cells, n_avg=int(s["verify"]["n_avg"])).astype(np.float64)
    ref = tensor_of < 0
    corrected, comp = compensate(reads, layout["target_us"].to_numpy()[ref], reads[ref])
    programmed = store.read(run_id, "programmed")
    trusted = programmed["converged"].to_numpy(bool) if len(programmed) == cells.size else None
    decoded = decode_model(model, names, encoded, cfg.code, corrected, tensor_of, trusted)
    _bn_recalibrated(decoded, train, cfg)
    raw = decode_model(model, names, encoded, cfg.code, reads, tensor_of, trusted)
    stored = info.get("result") or {}
    programmed_at = store.stages(run_id).get("programmed", {}).get("t_chip_s")
    return {"run_id": run_id, "model": cfg.model, "cells": int(cells.size), "chip_time_s": chip.now(),
            "age_s": None if programmed_at is None else chip.now() - programmed_at,
            "accuracy_loaded": accuracy(decoded, test.x, test.y),
            "accuracy_loaded_uncompensated": accuracy(raw, test.x, test.y),
            "accuracy_stored_at_store_time": stored.get("accuracy_stored"),
            "accuracy_reference": stored.get("accuracy_reference"), "drift_compensation": comp}
