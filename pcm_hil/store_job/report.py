"""PNG report of a store run: error versus importance, accuracy versus cells per weight."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .job import StoreOutcome


def write_store_report(outcome: "StoreOutcome", path: str | Path) -> Path:
    """Draw the PNG report of a finished store run to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result, cells = outcome.record, outcome.per_cell
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.8))
    imp, err, tol = cells["importance"], np.abs(cells["error_weight"]), cells["tolerance_us"]
    a = ax[0]
    for t in np.unique(tol):
        m = (tol == t) & (imp > 0) & (err > 0)
        a.loglog(imp[m], err[m], ".", ms=1.5, alpha=0.4, label=f"±{t:g} µS")
    a.set(xlabel="importance of the cell (F·gain², per weight²)", ylabel="|weight error| after retention",
          title="error versus importance (each dot a cell)")
    a.legend(markerscale=8, title="verify tolerance")
    b = ax[1]
    curve = result.get("accuracy_curve") or []
    if curve:
        b.plot([c["cells_per_weight"] for c in curve], [100 * c["accuracy_predicted"] for c in curve], "o-",
               label="predicted by the noise model")
    mean = 100 * result["accuracy_stored_mean"]
    lo, hi = (100 * v for v in result["accuracy_stored_ci95"])
    b.errorbar([result["cells_per_weight"]], [mean], yerr=[[mean - lo], [hi - mean]], fmt="r*", ms=14, capsize=4,
               label=f"measured: mean of {result['programmings']} programmings, 95 % CI")
    b.axhline(100 * result["accuracy_reference"], color="k", lw=1, label="float reference")
    b.axhline(100 * result["accuracy_reference"] - 0.5, color="k", lw=1, ls="--", label="reference − 0.5 pp")
    best = result.get("best_digital")
    if best:
        medium = result["digital_medium"]
        b.plot([best["cells"] / result["weights"]], [100 * best["accuracy_test"]], "gs", ms=9,
               label=f"strongest digital ({best.get('precision') or str(best['bits']) + ' bits'}, {best['start']}; "
                     f"{medium['bits_per_cell']} bit/cell + BCH t={medium['code'].split('t=')[-1].split(')')[0]})")
    b.set(xlabel="cells per weight, everything the decoder reads counted",
          ylabel="test accuracy (%)",
          title=f"{result['model']}: accuracy after {result['retention_s']:g} s")
    b.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
