"""The store job: store a trained network in the chip and read it back.

A short orchestration over the stages, each taking only its own config:
inputs (network and data, loaded once) → compression → importance → layout (codes,
replicas, reference cells) → allocation (program-and-verify settings under a pulse
budget) → program (checkpointed) → wait the retention time → read-back (drift
compensation, decoding, batch-norm re-estimation) → evaluation (more programmings of the
layout, the digital medium measured on the chip) → baselines and cost accounting.
The layout goes to the run store before the first pulse, so ``load_run`` reads the model
back later and ``resume_store_job`` continues a run that was stopped or killed.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from pcm_hil_noisemodel import NoiseModel

from .. import __version__, coding
from ..checkpoint import Interrupted, VerifyJournal, recording_outcome, wait_until
from ..chip import Chip
from ..coding import CodeConfig
from ..models import accuracy, load_state_dict
from ..program import VerifyConfig, program_verify
from ..cells import check_unchanged, record_writes
from ..run_store import CellClaim, RunStore
from . import allocation, baselines, digital_medium, layout as layout_stage, model_cache, readback, side_info
from .allocation import AllocationConfig, Plan
from .baselines import BaselineConfig
from .compression import Compressed, CompressionConfig
from .digital_medium import Medium, MediumConfig
from .evaluation import EvaluationConfig, cells_needed, evaluate
from .importance import ImportanceConfig, estimate
from .inputs import Inputs, NetworkConfig, load_inputs
from .layout import Layout, LayoutConfig
from .prediction import accuracy_curve
from .readback import ReadbackConfig
from .replica_choice import ReplicaChoice, ReplicaChoiceConfig, choose_replicas

Progress = Callable[[str, float, float], None]


def _silent(stage: str, done: float, total: float) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class StoreConfig:
    """The store job's settings: one config per stage, and the job's own."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    replica_choice: ReplicaChoiceConfig = field(default_factory=ReplicaChoiceConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    readback: ReadbackConfig = field(default_factory=ReadbackConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    medium: MediumConfig = field(default_factory=MediumConfig)
    retention_s: float = 86400.0  # programming to read-back
    first_cell: int | None = None  # None: the first free cells (the run store keeps who owns which cells)
    overwrite: str | None = None   # a run whose cells this one may reuse (that run's load fails from then on)
    checkpoint_s: float = 1.0     # program-and-verify state is saved at least this often
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.retention_s, (int, float)) and 0 <= self.retention_s <= 10 * 365 * 86400):
            raise ValueError(f"retention_s must be in [0, 10 years], got {self.retention_s!r}")
        if not (isinstance(self.checkpoint_s, (int, float)) and 0 <= self.checkpoint_s <= 3600):
            raise ValueError(f"checkpoint_s must be in [0, 3600] s, got {self.checkpoint_s!r}")
        if self.first_cell is not None and (type(self.first_cell) is not int or self.first_cell < 0):
            raise ValueError(f"first_cell must be a non-negative integer or None, got {self.first_cell!r}")
        if self.overwrite is not None and not (isinstance(self.overwrite, str) and self.overwrite):
            raise ValueError(f"overwrite must name a run, got {self.overwrite!r}")

    # the flat option names of the command line (and of run records before the stages)
    _OWN = ("retention_s", "first_cell", "overwrite", "checkpoint_s", "seed")
    _STAGE_OF = {
        "model": ("network", "name"), "checkpoint": ("network", "checkpoint"), "data_dir": ("network", "data_dir"),
        "sparsity": ("compression", "sparsity"), "finetune_epochs": ("compression", "finetune_epochs"),
        "training_noise": ("compression", "training_noise"),
        "importance": ("importance", "method"), "importance_samples": ("importance", "samples"),
        "code": ("layout", "code"), "replicas_per_weight": ("layout", "replicas_per_weight"),
        "max_replicas": ("layout", "max_replicas"), "replicas_per": ("layout", "replicas_per"), "reference_cells_per_level": ("layout", "reference_cells_per_level"),
        "g_hi_fraction": ("layout", "g_hi_fraction"), "mask_in_cells": ("layout", "mask_in_cells"),
        "mask_gap_us": ("layout", "mask_gap_us"), "mask_sigmas": ("layout", "mask_sigmas"),
        "replicas_auto": ("replica_choice", "auto"), "max_storage_loss_pp": ("replica_choice", "max_storage_loss_pp"),
        "allocation": ("allocation", "allocation"), "pulse_budget": ("allocation", "pulse_budget"),
        "target_loss": ("allocation", "target_loss"),
        "loss_margin": ("allocation", "loss_margin"), "caps": ("allocation", "caps"),
        "bn_samples": ("readback", "bn_samples"), "drift_compensation": ("readback", "drift_compensation"),
        "digital_baseline": ("baselines", "search"), "digital_nm": ("baselines", "nm_patterns"),
        "programmings": ("evaluation", "programmings"),
        "chips": ("evaluation", "chips"), "accuracy_curve": ("evaluation", "accuracy_curve"),
        "medium_cells": ("medium", "cells_per_density"),
    }

    @classmethod
    def from_options(cls, **options: Any) -> "StoreConfig":
        """A config from flat option names, as the command line has them (``model="mlp-digits",
        sparsity=0.5, code=CodeConfig("pair"), seed=1``; ``model`` names the network);
        ``seed`` seeds every stage that draws."""
        unknown = set(options) - set(cls._STAGE_OF) - set(cls._OWN)
        if unknown:
            raise ValueError(f"unknown store option(s): {', '.join(sorted(unknown))}")
        staged: dict[str, dict[str, Any]] = {"network": {}, "compression": {}, "importance": {}, "layout": {},
                                              "replica_choice": {}, "allocation": {}, "readback": {}, "baselines": {},
                                              "evaluation": {}, "medium": {}}
        own = {}
        for k, v in options.items():
            if k in cls._STAGE_OF:
                stage, name = cls._STAGE_OF[k]
                staged[stage][name] = v
            else:
                own[k] = v
        seed = own.get("seed", 0)
        lay = staged["layout"]
        if isinstance(lay.get("code"), dict):  # a flat record of an older run
            lay["code"] = CodeConfig(**{"from_threshold": False, **lay["code"]})
            lay.setdefault("mask_in_cells", False)
        if "caps" in staged["allocation"]:
            staged["allocation"]["caps"] = tuple(staged["allocation"]["caps"])
        code = lay.get("code", CodeConfig())
        levels = code.levels if code.code == "multilevel" else None
        return cls(network=NetworkConfig(**staged["network"]),
                   compression=CompressionConfig(**staged["compression"], quantize_levels=levels, seed=seed),
                   importance=ImportanceConfig(**staged["importance"], seed=seed), layout=LayoutConfig(**lay),
                   replica_choice=ReplicaChoiceConfig(**staged["replica_choice"]),
                   allocation=AllocationConfig(**staged["allocation"]),
                   readback=ReadbackConfig(**staged["readback"], seed=seed),
                   baselines=BaselineConfig(**staged["baselines"]),
                   evaluation=EvaluationConfig(**staged["evaluation"]),
                   medium=MediumConfig(**staged["medium"], seed=seed), **own)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreConfig":
        """The config a run recorded (``asdict`` of a StoreConfig, or the flat form of older runs)."""
        if "network" not in d:
            return cls.from_options(**d)
        # runs recorded before the per-channel default, and before the mask could go in the cells
        lay = {"replicas_per": "weight", "mask_in_cells": False, **d["layout"]}
        lay["code"] = CodeConfig(**{"from_threshold": False, **lay["code"]})  # runs before it existed: off
        alloc = dict(d["allocation"])
        alloc["caps"] = tuple(alloc["caps"])
        choice = dict(d.get("replica_choice", {}))  # runs recorded before the choice existed: off
        if "candidates" in choice:
            choice["candidates"] = tuple(choice["candidates"])
        base, medium = dict(d["baselines"]), dict(d.get("medium", {}))
        base.update({k: tuple(base[k]) for k in ("bits", "sparsities", "clips") if k in base})
        base["nm_patterns"] = tuple(tuple(p) for p in base.get("nm_patterns", ()))
        if "densities" in medium:
            medium["densities"] = tuple(medium["densities"])
        return cls(network=NetworkConfig(**d["network"]), compression=CompressionConfig(**d["compression"]),
                   importance=ImportanceConfig(**d["importance"]), layout=LayoutConfig(**lay),
                   replica_choice=ReplicaChoiceConfig(**choice), allocation=AllocationConfig(**alloc), readback=ReadbackConfig(**d["readback"]),
                   baselines=BaselineConfig(**base), evaluation=EvaluationConfig(**d.get("evaluation", {})),
                   medium=MediumConfig(**medium), **{k: d[k] for k in cls._OWN if k in d})


@dataclass
class Prepared:
    """Everything decided before the first pulse."""

    inputs: Inputs
    compressed: Compressed
    importance: dict[str, np.ndarray]
    layout: Layout
    plan: Plan
    accuracy_compressed: float
    replica_choice: ReplicaChoice | None = None  # with ``--replicas auto``: the candidates the noise model scored
    mask_why: str | None = None  # why the mask is not in the cells where the configuration asks for it


@dataclass
class StoreOutcome:
    """A finished store run: its record (JSON-able, also in the run store), the network as
    decoded from the chip, and per-cell figures for the report."""

    record: dict[str, Any]
    decoded: nn.Module
    per_cell: dict[str, np.ndarray]


def prepare(inputs: Inputs, noise: NoiseModel, cfg: StoreConfig, n_cells: int, progress: Progress = _silent
            ) -> Prepared:
    """Compression, importance, layout and allocation; raises ValueError before any pulse."""
    progress("prepare", 0, 4)
    compressed = model_cache.cached_compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y,
                                             cfg.compression)  # computed once per sweep when a cache is in use
    acc_comp = accuracy(compressed.model, inputs.test.x, inputs.test.y)
    progress("prepare", 1, 4)
    imp = estimate(compressed.model, inputs.names, inputs.train, cfg.importance)
    progress("prepare", 2, 4)
    cfg, mask_why = placed_mask(cfg, compressed.masks, noise)
    choice = None
    if cfg.replica_choice.auto:
        choice = choose_replicas(inputs, noise, compressed, imp, cfg.layout, cfg.allocation, cfg.readback,
                                 cfg.retention_s, cfg.replica_choice, cfg.seed)
        cfg = chosen(cfg, choice)
    lay = layout_stage.encode(compressed.model, inputs.names, compressed.masks, imp, noise, cfg.layout,
                              cfg.retention_s)
    need = lay.targets.size + cells_needed(lay.targets.size, cfg.evaluation, cfg.medium)
    if (cfg.first_cell or 0) + need > n_cells:
        raise ValueError(f"the model needs {lay.targets.size} cells and its evaluation {need - lay.targets.size} more "
                         f"from cell {cfg.first_cell or 0}; the chip has {n_cells} cells")
    plan = allocation.plan_cells(noise, lay.targets, lay.importance, lay.reference, cfg.allocation, lay.min_us)
    progress("prepare", 4, 4)
    if mask_why is None and layout_stage.mask_in_cells(cfg.layout, compressed.masks is not None) \
            and not lay.mask_cells:
        mask_why = (f"the calibrated gap is above {cfg.layout.mask_max_gap_fraction:g} of the window on this chip: "
                    "the coded mask")
    return Prepared(inputs, compressed, imp, lay, plan, acc_comp, choice, mask_why)


def placed_mask(cfg: StoreConfig, masks: dict[str, np.ndarray] | None, noise: NoiseModel,
                medium: Medium | None = None) -> tuple[StoreConfig, str | None]:
    """``cfg`` with the keep-mask where it takes fewer cells, and why when that is not in the
    cells as asked: one RESET-only cell per pruned weight against the range-coded mask on the
    digital medium the noise model predicts (``medium``, else :func:`.digital_medium.predicted`).
    At 75 % sparsity the cells win unless the medium holds 2 bits per cell; at 90 % the
    coded mask (H(0.1) = 0.47 bits per weight) wins on any medium."""
    if not layout_stage.mask_in_cells(cfg.layout, masks is not None):
        return cfg, None
    assert masks is not None
    medium = medium or digital_medium.predicted(noise, cfg.layout.g_hi(noise), cfg.retention_s, cfg.medium, cfg.seed)
    in_cells, coded = side_info.mask_cells_each_way(masks, medium)
    if in_cells <= coded:
        return cfg, None
    why = (f"the coded mask takes fewer cells on the predicted medium ({medium.bits_per_cell} bit/cell): "
           f"{coded:,.0f} against {in_cells:,.0f} in the cells")
    return replace(cfg, layout=replace(cfg.layout, mask_in_cells=False)), why


def chosen(cfg: StoreConfig, choice: ReplicaChoice | None) -> StoreConfig:
    """``cfg`` with the replicas the choice made (unchanged without one)."""
    if choice is None:
        return cfg
    return replace(cfg, layout=replace(cfg.layout, replicas_per_weight=choice.replicas_per_weight))


def run_store_job(chip: Chip, noise: NoiseModel, store: RunStore, cfg: StoreConfig, progress: Progress | None = None,
                  stop: Callable[[], bool] | None = None, inputs: Inputs | None = None) -> StoreOutcome:
    """Store the network ``cfg.network`` on ``chip``. ``inputs``: the network and data if already loaded.

    The run checkpoints as it goes (layout, per-cell program-and-verify state, programmed
    table, read-back); :func:`resume_store_job` continues it after a kill. ``stop()`` is
    polled between transactions; when it returns True the run ends with
    :class:`~pcm_hil.checkpoint.Interrupted`, resumable.
    """
    report = progress or _silent
    t_start = time.monotonic()
    if cfg.evaluation.chips > 1 and type(chip).sibling is Chip.sibling:
        raise ValueError(f"chips = {cfg.evaluation.chips} needs sibling chips, which only the emulator has "
                         f"({type(chip).__name__} is one chip): use chips = 1")
    torch.manual_seed(cfg.seed)
    inputs = inputs or load_inputs(cfg.network)
    prep = prepare(inputs, noise, cfg, chip.geometry.n_cells, report)
    cfg = chosen(cfg, prep.replica_choice)  # the run records the replicas it programs
    vcfg = replace(VerifyConfig.measured_with(noise), max_pulses=int(prep.plan.max_pulses.max()))
    settings = {"procedure": "store", "software": f"pcm-hil {__version__}", "chip": chip.identity(),
                "chip_id": chip.chip_id(), "config": asdict(cfg), "verify": asdict(vcfg),
                "noise_model": noise.provenance, "tensors": prep.layout.tensor_info()}
    # the run holds the model's cells and, after them, the cells its evaluation programs
    n_model = int(prep.layout.targets.size)
    run_id = store.create_run("store", settings, CellClaim(
        chip.chip_id(), chip.geometry.n_cells, n_model + cells_needed(n_model, cfg.evaluation, cfg.medium),
        cfg.first_cell, overwrite=cfg.overwrite))
    cells = store.cells_of(run_id)[:n_model]
    with recording_outcome(store, run_id):
        chip.attach_state(store.chip_file(chip.chip_id()))  # an emulated chip keeps its cells in the run directory
        noise.save(store.run_file(run_id, "noise"))
        _write_layout(store, run_id, prep, cells)
    return _program_and_read(chip, noise, store, cfg, run_id, prep, cells, vcfg, report, stop, t_start, False)


def resume_store_job(chip: Chip, store: RunStore, run_id: str, progress: Progress | None = None,
                     stop: Callable[[], bool] | None = None) -> StoreOutcome:
    """Continue a store run that was killed or stopped: cells already verified are not
    pulsed again, cells in flight are re-verified first, finished stages are skipped."""
    report = progress or _silent
    t_start = time.monotonic()
    info = store.run(run_id)
    if info["kind"] == "store":
        chip.require_same_chip(info["settings"].get("chip_id"), f"run {run_id} was stored")
    store.resume_run(run_id, "store")
    with recording_outcome(store, run_id):
        if "layout" not in store.stages(run_id):
            raise ValueError(f"run {run_id} stopped before its layout was written, so nothing was programmed: "
                             "start a new run instead")
        noise = NoiseModel.load(store.run_file(run_id, "noise"))
        cfg, prep = _restore(store, run_id, noise, info)
        vcfg = VerifyConfig(**info["settings"]["verify"])
        cells = store.read(run_id, "layout")["cell"].to_numpy(np.int64)
        chip.attach_state(store.chip_file(chip.chip_id()))
    return _program_and_read(chip, noise, store, cfg, run_id, prep, cells, vcfg, report, stop, t_start, True)


def _program_and_read(chip: Chip, noise: NoiseModel, store: RunStore, cfg: StoreConfig, run_id: str,
                      prep: Prepared, cells: np.ndarray, vcfg: VerifyConfig, report: Progress,
                      stop: Callable[[], bool] | None, t_start: float, resumed: bool) -> StoreOutcome:
    inputs, lay = prep.inputs, prep.layout
    with recording_outcome(store, run_id):
        if "programmed" not in store.stages(run_id):
            journal = VerifyJournal(store, run_id, "program", cells, every_s=cfg.checkpoint_s, sync=chip.sync)
            res = program_verify(chip, cells, prep.plan.aim_us, vcfg, tolerance_us=prep.plan.tolerance_us,
                                 max_pulses=prep.plan.max_pulses, progress=lambda d, t: report("program", d, t),
                                 state=journal.load(), checkpoint=journal, stop=stop)
            if res.stop_reason == "interrupted":
                raise Interrupted(run_id, "program-and-verify")
            chip.sync()
            store.append(run_id, "programmed", pd.DataFrame({
                "cell": cells, "final_us": res.final_us, "pulses": res.pulses, "resets": res.resets,
                "converged": res.converged.astype(np.int64), "t_read_s": res.state.t_read_s}),
                stage="programmed", info={"t_chip_s": chip.now()})
        record_writes(store, run_id, chip, cells)  # load compares them: cells written since are detected
        _wait_retention(chip, store.stages(run_id)["programmed"]["t_chip_s"] + cfg.retention_s, stop, run_id, report)
        prog = store.read(run_id, "programmed")
        if "readback" in store.stages(run_id):  # read before a kill: the reads are kept, not repeated
            reads = store.read(run_id, "readback")["read_us"].to_numpy(np.float64)
        else:
            reads = chip.read(cells, n_avg=vcfg.n_avg).astype(np.float64)
        converged = prog["converged"].to_numpy(bool)
        back = readback.evaluate_reads(reads, prep.compressed.model, inputs.names, lay, cfg.layout.code, converged,
                                       inputs.train, inputs.test, cfg.readback, inputs.val)
        if "readback" not in store.stages(run_id):
            store.append(run_id, "readback", pd.DataFrame({"cell": cells, "read_us": reads,
                                                           "corrected_us": back.corrected_us,
                                                           "t_chip_s": chip.now()}), stage="readback")
        set_pulses, resets = int(prog["pulses"].sum()), int(prog["resets"].sum())
        record: dict[str, Any] = {
            **back.figures, "run_id": run_id, "model": cfg.network.name, "weights": lay.weights,
            "cells": int(cells.size), "retention_s": cfg.retention_s, "pulses": set_pulses + resets + int(cells.size),
            "pulses_planned": prep.plan.pulses, "set_pulses": set_pulses, "resets": resets + int(cells.size),
            "code": coding.describe(cfg.layout.code), "allocation": cfg.allocation.allocation,
            "sparsity": cfg.compression.sparsity, "accuracy_reference": inputs.accuracy_reference,
            "accuracy_compressed": prep.accuracy_compressed, "resumed": resumed,
            "replicas_per_weight": cfg.layout.replicas_per_weight,
            "replica_choice": store.stages(run_id)["layout"].get("replica_choice"),
            "yield": float(prog["converged"].mean()),
            "mask_in_cells": _mask_in_cells(lay, store.stages(run_id)["layout"].get("mask_why"))}
        report("evaluation", 0, 1)
        if "evaluation" not in store.stages(run_id):
            held = store.cells_of(run_id)
            if held is None or held.size < cells.size + cells_needed(cells.size, cfg.evaluation, cfg.medium):
                raise ValueError(f"run {run_id} holds no cells for its evaluation (recorded before cells had owners)")
            ev = evaluate(chip, noise, cells, held[cells.size:], lay, prep.plan, vcfg, inputs, prep.compressed.model,
                          cfg.layout.code, (back.figures["accuracy_stored"], back.figures["accuracy_stored_val"]),
                          cfg.retention_s, cfg.evaluation, cfg.medium, cfg.readback, cfg.layout.g_hi(noise), stop,
                          run_id, back.figures.get("mask_decoding"))
            store.mark(run_id, "evaluation", ev.figures())
        record.update(store.stages(run_id)["evaluation"])
        medium = Medium(**record["digital_medium"])
        side = side_info.side_bits(lay, cfg.layout.code, prep.compressed.model, inputs.names, converged)
        report("baselines", 0, 1)
        record.update(baselines.costs(inputs, prep.compressed.model, prep.compressed.masks, int(cells.size), side,
                                      medium, record["accuracy_stored_val_mean"], cfg.compression, cfg.readback,
                                      cfg.baselines))
        if cfg.evaluation.accuracy_curve:
            report("accuracy curve", 0, 1)
            record["accuracy_curve"] = accuracy_curve(inputs, prep.compressed, prep.importance, noise, cfg.layout,
                                                      cfg.readback, cfg.retention_s, medium, seed=cfg.seed)
        record["seconds"] = time.monotonic() - t_start
        chip.sync()
        record["chip_state"] = str(store.chip_file(chip.chip_id()))
    store.finish(run_id, result=record)
    ref = lay.reference
    per_cell = {"importance": lay.importance[~ref], "error_weight": (back.corrected_us - lay.targets)[~ref] * lay.gains,
                "tolerance_us": prep.plan.tolerance_us[~ref]}
    return StoreOutcome(record, back.decoded, per_cell)


def _mask_in_cells(lay: Layout, why: str | None) -> dict[str, Any]:
    """Whether the keep-mask is in the cells, and if so its gap, threshold and cells; if not,
    why (where the configuration asked for it)."""
    mic = [e for e in lay.encoded if e.mask_in_cells]
    if not mic:
        return {"on": False, **({"why": why} if why else {})}
    return {"on": True, "gap_us": mic[0].gap, "threshold_us": mic[0].threshold, "cells": lay.mask_cells,
            "tensors": len(mic)}


def _wait_retention(chip: Chip, t_chip_s: float, stop: Callable[[], bool] | None, run_id: str,
                    report: Progress) -> None:
    """Wait (by the chip's clock) until ``t_chip_s``, showing progress, honouring a stop request."""
    total = max(0.0, t_chip_s - chip.now())

    def between(now: float) -> None:
        if stop is not None and stop():
            raise Interrupted(run_id, "retention wait")
        report("retention", total - max(0.0, t_chip_s - now), total)

    wait_until(chip, t_chip_s, between)


def _write_layout(store: RunStore, run_id: str, prep: Prepared, cells: np.ndarray) -> None:
    """Everything a later ``load`` or ``--resume`` needs, written before the first pulse; the
    ``layout`` stage is marked in the same transaction as the layout table."""
    model, names = prep.compressed.model, prep.inputs.names
    digital = {n: t.detach().clone() for n, t in model.state_dict().items() if n not in names}
    _save_torch(digital, store.run_file(run_id, "digital"))
    _save_torch(model.state_dict(), store.run_file(run_id, "compressed"))
    side, table = prep.layout.to_tables(cells, prep.plan)
    store.append(run_id, "side", side)
    store.append(run_id, "layout", table, stage="layout", info={
        "accuracy_reference": prep.inputs.accuracy_reference, "accuracy_compressed": prep.accuracy_compressed,
        "lagrange": prep.plan.lagrange, "mask_why": prep.mask_why,
        "replica_choice": None if prep.replica_choice is None else prep.replica_choice.figures()})


def _save_torch(obj: Any, path: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _stored_layout(store: RunStore, run_id: str, info: dict[str, Any], cfg: StoreConfig) -> Layout:
    return Layout.from_tables(store.read(run_id, "side"), store.read(run_id, "layout"), info["settings"]["tensors"],
                              cfg.layout.code, cfg.compression.sparsity > 0)


def _restore(store: RunStore, run_id: str, noise: NoiseModel, info: dict[str, Any]) -> tuple[StoreConfig, Prepared]:
    """The run's :class:`Prepared` rebuilt from the store and its files (no re-training)."""
    cfg = StoreConfig.from_dict(info["settings"]["config"])
    lay = _stored_layout(store, run_id, info, cfg)
    done = store.stages(run_id)["layout"]
    inputs = load_inputs(cfg.network)
    model = copy.deepcopy(inputs.network)
    model.load_state_dict(load_state_dict(store.run_file(run_id, "compressed")), strict=True)
    masks = {e.name: e.mask for e in lay.encoded} if cfg.compression.sparsity > 0 else None
    imp = estimate(model, inputs.names, inputs.train, cfg.importance)
    table = store.read(run_id, "layout")
    plan = Plan(table["tolerance_us"].to_numpy(), table["max_pulses"].to_numpy(np.int64),
                table["expected_pulses"].to_numpy(), table["expected_sq_error_us2"].to_numpy(),
                table["aim_us"].to_numpy(), allocation.options(noise, cfg.allocation.caps),
                np.zeros(len(table), np.int64), done["lagrange"])
    return cfg, Prepared(inputs, Compressed(model, masks), imp, lay, plan, done["accuracy_compressed"])


def load_run(chip: Chip, store: RunStore, run_id: str) -> dict[str, Any]:
    """Read a stored model back from the chip using the layout in the run store."""
    info = store.run(run_id)
    if info["kind"] != "store":
        raise ValueError(f"run {run_id} is a {info['kind']} run, not a stored model")
    chip.require_same_chip(info["settings"].get("chip_id"), f"run {run_id} was stored")
    cfg = StoreConfig.from_dict(info["settings"]["config"])
    lay = _stored_layout(store, run_id, info, cfg)
    inputs = load_inputs(cfg.network)
    model = inputs.network
    model.load_state_dict({**model.state_dict(), **load_state_dict(store.run_file(run_id, "digital"))}, strict=True)
    cells = store.read(run_id, "layout")["cell"].to_numpy()
    reads = chip.read(cells, n_avg=int(info["settings"]["verify"]["n_avg"])).astype(np.float64)
    check_unchanged(store, run_id, chip, cells, reads)
    programmed = store.read(run_id, "programmed")
    trusted = programmed["converged"].to_numpy(bool) if len(programmed) == cells.size else None
    back = readback.evaluate_reads(reads, model, inputs.names, lay, cfg.layout.code, trusted, inputs.train,
                                   inputs.test, cfg.readback)
    stored = info.get("result") or {}
    programmed_at = store.stages(run_id).get("programmed", {}).get("t_chip_s")
    return {"run_id": run_id, "model": cfg.network.name, "cells": int(cells.size), "chip_time_s": chip.now(),
            "age_s": None if programmed_at is None else chip.now() - programmed_at,
            "accuracy_loaded": back.figures["accuracy_stored"],
            "accuracy_loaded_uncompensated": back.figures["accuracy_stored_uncompensated"],
            "accuracy_stored_at_store_time": stored.get("accuracy_stored"),
            "accuracy_reference": stored.get("accuracy_reference"), "drift_compensation": back.figures["drift_compensation"]}
