"""Stage 4 of the store job, allocation. Program-and-verify effort per cell, from importance and the calibrated noise model.

Each option is a (tolerance, pulse cap) the noise model was calibrated for; the loop is
pointed at the option's bias-compensated aim (``NoiseModel.aim``), so a loose window costs
few pulses without pulling weights towards zero. For cell i
with importance weight F_i·gain_i² (gain = weight per µS) and option o, the expected
cost is F_i·gain_i²·E[e²](G_i, o) and the expected pulses P(G_i, o). ``allocate``
minimises Σ cost under Σ pulses ≤ budget: a separable convex resource allocation,
solved with a Lagrange multiplier λ on the budget (each cell takes
argmin_o cost + λ·pulses; λ by bisection). ``uniform`` gives every cell the same option,
the best one that fits the budget. Cells whose target lies within the tolerance of the
RESET floor need only the RESET (one pulse).

Caps are kept high enough that nearly every cell verifies: a cell stopped by its cap sits
below its target, and such errors have the same sign across a tensor, which a diagonal
loss model underprices (measured: small caps looked cheap to the model and cost several
points of accuracy). Loose tolerances are the cheap options instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pcm_hil_noisemodel import NoiseModel

DEFAULT_CAPS = (12, 20, 40)
ALLOCATIONS = ("importance", "uniform")


@dataclass(frozen=True)
class AllocationConfig:
    """What the allocation stage reads. The budget counts SET pulses and RESETs of every
    cell, reference cells included. With neither a budget nor a target loss, the weight
    cells get the fewest pulses whose predicted loss is within ``loss_margin`` of the least
    this allocation reaches with any pulses: a target set by accuracy, so a loop that
    learns to program in fewer pulses spends fewer, not a worse store."""

    allocation: str = "importance"
    pulse_budget: float | None = None
    target_loss: float | None = None  # instead of a budget: ½·Σ F·E[e²] (loss units)
    loss_margin: float = 0.05         # neither given: predicted loss ≤ (1 + margin) × the least reachable
    caps: tuple[int, ...] = DEFAULT_CAPS

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be 'importance' or 'uniform', got {self.allocation!r}")
        if self.pulse_budget is not None and not (math.isfinite(self.pulse_budget) and self.pulse_budget > 0):
            raise ValueError(f"pulse_budget must be a positive number, got {self.pulse_budget!r}")
        if self.target_loss is not None and not (math.isfinite(self.target_loss) and self.target_loss > 0):
            raise ValueError(f"target_loss must be a positive number, got {self.target_loss!r}")
        if not (isinstance(self.loss_margin, (int, float)) and 0 < self.loss_margin <= 10):
            raise ValueError(f"loss_margin must be in (0, 10], got {self.loss_margin!r}")
        if self.pulse_budget is not None and self.target_loss is not None:
            raise ValueError("give a pulse budget or a target loss, not both")
        if not self.caps or any(type(c) is not int or c < 1 for c in self.caps):
            raise ValueError(f"caps must be positive integers, got {self.caps!r}")


@dataclass
class Plan:
    """Per-cell settings and the model's expectations for them."""

    tolerance_us: np.ndarray
    max_pulses: np.ndarray
    expected_pulses: np.ndarray
    expected_sq_error: np.ndarray  # µS²
    aim_us: np.ndarray             # where the loop is pointed (µS)
    options: list[tuple[float, int]]
    choice: np.ndarray
    lagrange: float = 0.0

    @property
    def pulses(self) -> float:
        return float(self.expected_pulses.sum())


def options(model: NoiseModel, caps: tuple[int, ...] = DEFAULT_CAPS) -> list[tuple[float, int]]:
    caps = tuple(c for c in caps if c <= model.max_pulses_) or (model.max_pulses_,)
    return [(t, c) for t in model.tolerances_us_ for c in caps]


@dataclass
class Table:
    """What each option means for each cell: arrays of shape (cells, options)."""

    options: list[tuple[float, int]]
    sq_error: np.ndarray  # E[e²] from the target (µS²)
    pulses: np.ndarray    # expected SET pulses + RESETs
    aim_us: np.ndarray    # where the loop is pointed (µS)

    def __getitem__(self, rows: np.ndarray) -> "Table":
        return Table(self.options, self.sq_error[rows], self.pulses[rows], self.aim_us[rows])

    def minimum_pulses(self) -> float:
        return float(self.pulses.min(axis=1).sum())

    def plan(self, choice: np.ndarray, lam: float = 0.0) -> Plan:
        rows = np.arange(choice.size)
        tol = np.array([o[0] for o in self.options])[choice]
        cap = np.array([o[1] for o in self.options])[choice]
        return Plan(tol, cap, self.pulses[rows, choice], self.sq_error[rows, choice], self.aim_us[rows, choice],
                    self.options, choice, lam)


EXCLUDED = 1e12  # error (µS²) and pulses of an option a cell may not take


def tables(model: NoiseModel, targets_us: np.ndarray, opts: list[tuple[float, int]],
           min_us: np.ndarray | None = None) -> Table:
    """Expected error, pulses and aim of every option for every target. ``min_us`` (per
    cell): the lowest bottom of the verify window (target − tolerance) the cell may have; an
    option below it is excluded (a kept weight's cell of a mask in the cells must not land
    where pruned cells read)."""
    t = np.asarray(targets_us, float)
    err2, pulses, aims = (np.empty((t.size, len(opts))) for _ in range(3))
    floor = model.window_.g_floor_us
    read_var = (model.read_sigma(floor) * model.n_avg_ ** -model.read_noise_.averaging_exponent) ** 2
    for k, (tol, cap) in enumerate(opts):
        aims[:, k] = model.aim(t, tol)
        err2[:, k] = model.expected_sq_error(t, tol, cap, aims[:, k])
        pulses[:, k] = model.expected_pulses(aims[:, k], tol, cap)
        reset_only = t <= floor + 0.5 * tol
        aims[reset_only, k] = floor
        err2[reset_only, k] = (floor - t[reset_only]) ** 2 + read_var
        pulses[reset_only, k] = 1.0
        if min_us is not None:
            out = t - tol < min_us
            err2[out, k], pulses[out, k] = EXCLUDED, EXCLUDED
    return Table(list(opts), err2, pulses, aims)


def allocate(weight: np.ndarray, table: Table, budget: float) -> Plan:
    """Importance-based allocation: minimise Σ weight·E[e²] subject to Σ pulses ≤ budget."""
    weight = np.asarray(weight, float)
    if not np.all(np.isfinite(weight)) or (weight.size and weight.min() < 0):
        raise ValueError("importance weights must be finite and >= 0")
    _check_budget(table, budget)
    cost, pulses = weight[:, None] * table.sq_error, table.pulses

    def pick(lam: float) -> np.ndarray:
        return np.argmin(cost + lam * pulses, axis=1)

    rows = np.arange(weight.size)
    best = pick(0.0)
    if pulses[rows, best].sum() <= budget:
        return table.plan(best)
    hi = 1.0
    while pulses[rows, pick(hi)].sum() > budget and hi < 1e300:
        hi *= 4.0
    lo = 0.0
    for _ in range(60):  # bisection on λ: the smallest multiplier whose choice fits the budget
        mid = 0.5 * (lo + hi)
        if pulses[rows, pick(mid)].sum() > budget:
            lo = mid
        else:
            hi = mid
    return table.plan(pick(hi), hi)


def allocate_for_loss(weight: np.ndarray, table: Table, max_loss: float) -> Plan:
    """The fewest expected pulses whose predicted loss increase ½·Σ weight·E[e²] stays ≤ ``max_loss``."""
    weight = np.asarray(weight, float)
    if not (np.isfinite(max_loss) and max_loss > 0):
        raise ValueError(f"target loss increase must be a positive number, got {max_loss!r}")
    loss = lambda plan: 0.5 * float((weight * plan.expected_sq_error).sum())  # noqa: E731
    hi = float(np.where(table.pulses < EXCLUDED, table.pulses, 0.0).max(axis=1).sum())
    best = allocate(weight, table, hi)
    if loss(best) > max_loss:
        raise ValueError(f"target loss increase {max_loss:.3g} is out of reach: the tightest settings give "
                         f"{loss(best):.3g}")
    lo = table.minimum_pulses()
    for _ in range(40):  # the predicted loss falls as the budget grows
        mid = 0.5 * (lo + hi)
        plan = allocate(weight, table, mid)
        if loss(plan) <= max_loss:
            hi, best = mid, plan
        else:
            lo = mid
    return best


def least_loss(weight: np.ndarray, table: Table, allocation: str = "importance") -> float:
    """The least predicted loss increase ½·Σ weight·E[e²] an allocation reaches with any
    number of pulses: each cell's best option (importance), the best shared option (uniform)."""
    cost = 0.5 * np.asarray(weight, float)[:, None] * table.sq_error
    return float(cost.min(axis=1).sum() if allocation == "importance" else cost.sum(axis=0).min())


def uniform_for_loss(weight: np.ndarray, table: Table, max_loss: float) -> Plan:
    """The same option for every cell: the fewest expected pulses whose predicted loss stays ≤ ``max_loss``."""
    loss = 0.5 * (np.asarray(weight, float)[:, None] * table.sq_error).sum(axis=0)
    fits = np.flatnonzero(loss <= max_loss)
    if fits.size == 0:
        raise ValueError(f"target loss increase {max_loss:.3g} is out of reach: the best shared setting gives "
                         f"{loss.min():.3g}")
    return table.plan(np.full(table.pulses.shape[0], fits[np.argmin(table.pulses.sum(axis=0)[fits])]))


def uniform(weight: np.ndarray, table: Table, budget: float) -> Plan:
    """The same option for every cell: the lowest importance-weighted error that fits the budget."""
    _check_budget(table, budget)
    total = table.pulses.sum(axis=0)
    fits = np.flatnonzero(total <= budget)
    if fits.size == 0:
        k = int(np.argmin(total))
    else:
        k = int(fits[np.argmin((np.asarray(weight, float)[:, None] * table.sq_error).sum(axis=0)[fits])])
    return table.plan(np.full(weight.size, k))


def replicas(weight: np.ndarray, variance: np.ndarray, cells_per_replica: int, budget_cells: float,
             r_max: int = 8, groups: np.ndarray | None = None) -> np.ndarray:
    """Replicas per weight minimising Σ weight_i·variance_i/r_i subject to Σ cells ≤ budget.

    The continuous optimum is r_i ∝ sqrt(weight_i·variance_i) (r ∝ σ·√F); each weight takes
    the integer r in [1, r_max] minimising weight·variance/r + μ·cells·r, with μ by bisection.
    ``groups`` (a group index per weight, e.g. its output channel): one count per group,
    chosen for the group's summed cost and cells.
    """
    weight, variance = np.asarray(weight, float), np.asarray(variance, float)
    n = weight.size
    if budget_cells < n * cells_per_replica:
        raise ValueError(f"cell budget {budget_cells:.0f} is below one replica per weight ({n * cells_per_replica})")
    if groups is None:
        groups = np.arange(n)
    _, groups = np.unique(groups, return_inverse=True)
    size = np.bincount(groups).astype(float) * cells_per_replica
    r = np.arange(1, r_max + 1)
    cost = np.bincount(groups, weight * variance)[:, None] / r[None, :]

    def cells(mu: float) -> tuple[np.ndarray, float]:
        pick = r[np.argmin(cost + mu * size[:, None] * r[None, :], axis=1)]
        return pick, float((pick * size).sum())

    if cells(0.0)[1] <= budget_cells:
        return cells(0.0)[0][groups]
    lo, hi = 0.0, 1.0
    while cells(hi)[1] > budget_cells:
        hi *= 4.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cells(mid)[1] > budget_cells:
            lo = mid
        else:
            hi = mid
    return cells(hi)[0][groups]


def _check_budget(table: Table, budget: float) -> None:
    need = table.minimum_pulses()
    if not np.isfinite(budget) or budget < need:
        raise ValueError(f"pulse budget {budget:.0f} is too small: programming every cell once needs at "
                         f"least {need:.0f} pulses")


def tightest(opts: list[tuple[float, int]]) -> int:
    """Index of the tightest, longest option: what reference cells get."""
    return min(range(len(opts)), key=lambda i: (opts[i][0], -opts[i][1]))


def plan_cells(noise: NoiseModel, targets_us: np.ndarray, importance: np.ndarray, reference: np.ndarray,
               cfg: AllocationConfig, min_us: np.ndarray | None = None) -> Plan:
    """Every cell's program-and-verify setting: reference cells (``reference`` mask) always
    the tightest (they calibrate every other read), weight cells by ``cfg``: under the pulse
    budget that is left, else the fewest pulses meeting the target loss (given, or the least
    reachable plus ``loss_margin``); ``min_us``: see :func:`tables`."""
    table = tables(noise, targets_us, options(noise, cfg.caps), min_us)
    opts = table.options
    tight = tightest(opts)
    pulses_ref = table.pulses[reference, tight].sum()
    cells = table[~reference]
    weight = importance[~reference]
    budget = cfg.pulse_budget
    if budget is not None:
        if budget - pulses_ref < cells.minimum_pulses():
            raise ValueError(f"pulse budget {budget:.0f} is too small: programming every cell once needs at least "
                             f"{cells.minimum_pulses() + pulses_ref:.0f} pulses")
        wplan = (allocate if cfg.allocation == "importance" else uniform)(weight, cells, budget - pulses_ref)
    else:
        target = cfg.target_loss
        if target is None:
            target = (1.0 + cfg.loss_margin) * least_loss(weight, cells, cfg.allocation)
        wplan = (allocate_for_loss if cfg.allocation == "importance" else uniform_for_loss)(weight, cells, target)
    choice = np.full(targets_us.size, tight)
    choice[~reference] = wplan.choice
    return table.plan(choice, wplan.lagrange)
