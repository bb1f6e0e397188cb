"""The study's grid: which store jobs it runs, each a :class:`Point` with every setting stated.

A point is one store job on its own emulated chip (profile, chip seed, geometry) with one
analog setting (replicas per kept weight, sparsity, and, for the ablations, the one
strategy switched off) read after one retention time. The job seed is the study's and the
same for every point, so a model is compressed identically on every chip: chips differ,
the stored model does not.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..app import ChipOptions
from ..coding import CodeConfig
from ..store_job import StoreConfig

HOUR_S, DAY_S, YEAR_S = 3600.0, 86400.0, 365 * 86400.0
RETENTION_NAMES = {HOUR_S: "1 hour", DAY_S: "1 day", YEAR_S: "1 year"}
MODELS = ("lenet5-fmnist", "lenet5-mnist5k", "resnet20-fmnist32", "mlp-digits")
# the emulated chip of each model: room for 5 programmings of its layout, the medium test and a calibration
GEOMETRY_OF = {"mlp-digits": (1, 256, 512)}  # 5 programmings of r3 and a 16,384-cell medium test per density
QUICK_GEOMETRY_OF = {"mlp-digits": (1, 128, 256)}  # --quick: 2 programmings, a 1,024-cell medium test
DEFAULT_GEOMETRY = (4, 512, 512)
# a model too slow for the whole grid on 2 cores (its fine-tunes alone take about 1 h on 2 workers): these settings at
# these retention times, no ablations; stated in the report. ResNet-20 prunes well (its digital competitor's best
# start is 90 % pruned), so its grid reaches 90 % too
REDUCED_GRID_OF: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "resnet20-fmnist32": (("r1.25-s75", "r2-s75", "r2-s90", "r1.25-s90"), (HOUR_S, DAY_S, YEAR_S))}


def retention_name(seconds: float) -> str:
    """``3600.0`` → "1 hour"; other values in seconds."""
    return RETENTION_NAMES.get(float(seconds), f"{seconds:g} s")


@dataclass(frozen=True)
class Setting:
    """One analog storage setting. ``ablation`` names the strategy it switches off (None: a
    point of the cells-versus-accuracy curve, every strategy on)."""

    name: str
    replicas_per_weight: float = 2.0      # mean replicas per kept weight (placed by importance when > 1)
    sparsity: float = 0.75
    code: str = "sign"                    # sign: |w| in the cell, the sign digital; offset: the sign in the cell
    redundancy: int = 1                   # replicas of every weight when not placed by importance
    percentile: float = 99.5              # clip |w| at this percentile per tensor (100: no clipping)
    allocation: str = "importance"        # program-and-verify settings: by importance, or one uniform setting
    replicas_per: str = "channel"         # one replica count per output channel, or per weight
    from_threshold: bool = True           # the sign code's window starts at the pruning threshold
    drift_compensation: bool = True       # reads corrected with the reference cells before decoding
    mask_in_cells: bool = False           # the pruning mask in the cells (sign code; the store job's opt-in), else coded
    ablation: str | None = None

    def store_options(self) -> dict[str, Any]:
        """The flat store options of this setting (:meth:`StoreConfig.from_options`); every
        other option is the store job's default."""
        code = CodeConfig(self.code, redundancy=self.redundancy, percentile=self.percentile,
                          from_threshold=self.from_threshold)
        return {"replicas_per_weight": self.replicas_per_weight, "sparsity": self.sparsity, "code": code,
                "allocation": self.allocation, "replicas_per": self.replicas_per,
                "drift_compensation": self.drift_compensation, "mask_in_cells": self.mask_in_cells}


@dataclass(frozen=True)
class Point:
    """One store job of the study."""

    model: str
    setting: Setting
    retention_s: float
    chip_seed: int
    profile: str = ChipOptions.profile  # the emulator's default device
    geometry: tuple[int, int, int] = (4, 512, 512)
    programmings: int = 5
    medium_cells: int = 16384
    digital_baseline: bool = True
    seed: int = 0  # the job's seed (compression, importance, read-back subsets, medium pattern)

    def key(self) -> str:
        """16 hex digits naming this point: the SHA-256 of every setting."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def store_config(self) -> StoreConfig:
        """The point's store job; without the noise model's accuracy curve, which the report does
        not read (on ResNet-20 its 15 simulated read-backs took 6–8 min a point)."""
        return StoreConfig.from_options(model=self.model, retention_s=self.retention_s, programmings=self.programmings,
                                        medium_cells=self.medium_cells, digital_baseline=self.digital_baseline,
                                        accuracy_curve=False, seed=self.seed, **self.setting.store_options())

    def chip_name(self) -> str:
        """The chip this point programs a fresh copy of (its noise model is calibrated once)."""
        return f"{self.profile}-seed{self.chip_seed}-{'x'.join(map(str, self.geometry))}"


# the curve: replicas per kept weight and sparsity, every strategy on
FULL_SETTINGS = (Setting("r1-s75", 1.0, 0.75), Setting("r1.25-s75", 1.25, 0.75), Setting("r1.5-s75", 1.5, 0.75),
                 Setting("r2-s75", 2.0, 0.75), Setting("r3-s75", 3.0, 0.75), Setting("r2-s50", 2.0, 0.5),
                 Setting("r2-s90", 2.0, 0.9), Setting("r1.25-s90", 1.25, 0.9))
QUICK_SETTINGS = (Setting("r1-s50", 1.0, 0.5), Setting("r2-s50", 2.0, 0.5), Setting("r2-s75", 2.0, 0.75))


def ablations(base: Setting) -> tuple[list[Setting], list[dict[str, str]]]:
    """Settings switching one strategy off at ``base``, and the strategies that cannot be
    switched off in the store job today (listed as not run, with why)."""
    uniform = max(1, round(base.replicas_per_weight))
    run = [
        replace(base, name=f"{base.name} no-importance-replicas", replicas_per_weight=1.0, redundancy=uniform,
                ablation=f"replicas by importance (→ {uniform} replicas for every kept weight)"),
        replace(base, name=f"{base.name} uniform-P&V", allocation="uniform",
                ablation="P&V budgets by importance (→ the best single setting within the same pulse budget)"),
        replace(base, name=f"{base.name} sign-in-cell", code="offset",
                ablation="digital sign (→ offset code: the sign in the analog value)"),
        replace(base, name=f"{base.name} no-clipping", percentile=100.0,
                ablation="clipping of the adaptive mapping (→ scale from max |w|, not the 99.5th percentile)"),
        replace(base, name=f"{base.name} no-drift-compensation", drift_compensation=False,
                ablation="drift compensation (→ reads decoded as read; the reference cells still counted)"),
        replace(base, name=f"{base.name} mask-in-cells", mask_in_cells=True,
                ablation="the range-coded mask (→ the mask in the cells: one RESET-only cell per pruned weight)"),
    ]
    not_run = [{"strategy": "adaptive mapping: per-tensor scale",
                "why": "the store job has no switch for one global scale (coding.scale_of is per tensor)"},
               ]
    run.insert(1, replace(base, name=f"{base.name} replicas-per-weight", replicas_per="weight",
                          ablation="replicas per output channel (→ per weight, its map paid for)"))
    run.insert(2, replace(base, name=f"{base.name} window-from-zero", from_threshold=False,
                          ablation="window from the pruning threshold (→ G = 0 at w = 0)"))
    return run, not_run


@dataclass(frozen=True)
class StudyConfig:
    """Everything the study varies and fixes."""

    models: tuple[str, ...] = ("lenet5-fmnist", "lenet5-mnist5k", "resnet20-fmnist32")
    settings: tuple[Setting, ...] = FULL_SETTINGS
    ablation_base: str = "r2-s75"           # the setting the ablations start from
    ablation_retention_s: float = DAY_S
    retentions_s: tuple[float, ...] = (HOUR_S, DAY_S, YEAR_S)
    chip_seeds: tuple[int, ...] = (0, 1)
    programmings: int = 5
    medium_cells: int = 16384               # data cells per density of the digital-medium measurement
    profile: str = ChipOptions.profile  # the emulator's default device
    geometry: tuple[int, int, int] | None = None  # None: per model (GEOMETRY_OF or QUICK_GEOMETRY_OF, else 4×512×512)
    digital_baseline: bool = True
    seed: int = 0
    quick: bool = False
    reduced: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = field(
        default_factory=lambda: dict(REDUCED_GRID_OF))  # model → (settings, retention times) it runs alone

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("the study needs at least one model")
        for m in self.models:
            if not all(self.curve_of(m)):
                names, rets = self.reduced[m]
                raise ValueError(f"{m} runs a reduced grid ({', '.join(names)} after "
                                 f"{', '.join(retention_name(r) for r in rets)}); the settings and retention times "
                                 "chosen leave it no point")
        if len(set(self.chip_seeds)) < 2:
            raise ValueError(f"the study needs at least 2 chip seeds, got {list(self.chip_seeds)}")
        if not self.retentions_s or any(not 0 <= r <= 10 * YEAR_S for r in self.retentions_s):
            raise ValueError(f"retention times must be in [0, 10 years] s, got {list(self.retentions_s)}")
        if type(self.programmings) is not int or not 2 <= self.programmings <= 100:
            raise ValueError(f"programmings must be an integer in [2, 100] (an interval needs 2), "
                             f"got {self.programmings!r}")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"setting names must differ, got {names}")
        if self.ablation_base and self.ablation_base not in names:
            raise ValueError(f"ablation_base {self.ablation_base!r} is not one of the settings {names}")

    @classmethod
    def quick_preset(cls, models: tuple[str, ...] | None = None) -> "StudyConfig":
        """A few minutes on 2 cores: mlp-digits, 1 day, 2 chips, 2 programmings, small chip and medium test."""
        return cls(models=models or ("mlp-digits",), settings=QUICK_SETTINGS, ablation_base="r2-s75",
                   retentions_s=(DAY_S,), chip_seeds=(0, 1), programmings=2, medium_cells=1024, quick=True)

    def points(self) -> list[Point]:
        """Every point: the curve (model × setting × retention × chip), then the ablations."""
        out = []
        common = {"profile": self.profile, "programmings": self.programmings,
                  "medium_cells": self.medium_cells, "digital_baseline": self.digital_baseline, "seed": self.seed}
        for m in self.models:
            per_model = QUICK_GEOMETRY_OF if self.quick else GEOMETRY_OF
            common["geometry"] = tuple(self.geometry or per_model.get(m, DEFAULT_GEOMETRY))
            settings, retentions = self.curve_of(m)
            for r in retentions:
                for s in settings:
                    for c in self.chip_seeds:
                        out.append(Point(m, s, float(r), c, **common))
            for s in self.ablation_settings()[0] if m not in self.reduced or self.quick else []:
                for c in self.chip_seeds:
                    out.append(Point(m, s, float(self.ablation_retention_s), c, **common))
        return out

    def curve_of(self, model: str) -> tuple[list[Setting], list[float]]:
        """The settings and retention times of ``model``'s curve: the study's, or, for a model
        with a reduced grid (not under --quick), those of them it names."""
        if model not in self.reduced or self.quick:
            return list(self.settings), list(self.retentions_s)
        names, rets = self.reduced[model]
        return [s for s in self.settings if s.name in names], [r for r in self.retentions_s if r in rets]

    def ablation_settings(self) -> tuple[list[Setting], list[dict[str, str]]]:
        if not self.ablation_base:
            return [], []
        base = next(s for s in self.settings if s.name == self.ablation_base)
        return ablations(base)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compression_key(p: Point) -> tuple[str, float]:
    """Points that share a compressed model (the job seed is the study's)."""
    return p.model, p.setting.sparsity


def setting_from_dict(d: dict[str, Any]) -> Setting:
    return Setting(**d)


def point_from_dict(d: dict[str, Any]) -> Point:
    d = dict(d)
    d["setting"] = setting_from_dict(d["setting"])
    d["geometry"] = tuple(d["geometry"])
    return Point(**d)


