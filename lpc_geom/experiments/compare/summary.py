"""What the comparison concludes from its runs: per-cell tables, GW matrices, separation-robustness correlations."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpc_geom.experiments.compare.grid import REFERENCE_CELL
from lpc_geom.experiments.sweep import aggregate

#: The robustness figure of each attack: mean relative L2 distance of its adversarial points, per run.
ATTACKS = {
    "DeepFool": "robust_deepfool_mean_relative_norm",
    "DeepFool refined": "robust_deepfool_refined_mean_relative_norm",
    "FMN": "robust_fmn_mean_relative_norm",
}
#: Cells left out of the second separation-robustness correlation (their DeepFool figure overshoots most).
CORRELATION_EXCLUDED = ("sphere",)
#: Table columns: (title, record field, scale, format).
TABLE_COLUMNS = (
    ("test acc %", "final_test_acc", 100.0, ".1f"),
    ("sep. ratio (train)", "train_separation_ratio", 1.0, ".3g"),
    ("sep. ratio (test)", "test_separation_ratio", 1.0, ".3g"),
    ("σ_W/σ_T (train)", "train_sigma_w_rel", 1.0, ".2g"),
    ("norm CV (train)", "train_norm_cv", 1.0, ".2g"),
    *((f"{name} ‖r‖/‖x‖", key, 1.0, ".3g") for name, key in ATTACKS.items()),
    ("FMN median", "robust_fmn_median_relative_norm", 1.0, ".3g"),
    ("s/epoch", "epoch_seconds_median", 1.0, ".3g"),
)



def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-cell mean and std over seeds (:func:`~lpc_geom.experiments.sweep.aggregate`), plus

    ``optimizer_name``, ``collapsed_to_origin`` (runs that ended with every class on the origin) and
    ``epoch_seconds_relative`` (median seconds per epoch over the :data:`REFERENCE_CELL`'s, NaN when that
    cell is not in the grid or has no finished run).
    """
    rows = aggregate(records, by=["geometry", "optimizer"])
    names = {(r["geometry"], r["optimizer"]): r.get("optimizer_name") for r in records}
    reference = next((r for r in rows if (r["geometry"], r["optimizer"]) == REFERENCE_CELL), None)
    ref_seconds = reference.get("epoch_seconds_median_mean", math.nan) if reference else math.nan
    for row in rows:
        key = (row["geometry"], row["optimizer"])
        row["optimizer_name"] = names[key]
        row["collapsed_to_origin"] = sum(
            1 for r in records if (r["geometry"], r["optimizer"]) == key and r.get("status") == "ok"
            and r.get("final_collapsed_to_origin"))
        seconds = row.get("epoch_seconds_median_mean", math.nan)
        row["epoch_seconds_relative"] = seconds / ref_seconds if ref_seconds and ref_seconds > 0 else math.nan
    return rows


def _cell_text(row: Mapping[str, Any], key: str, scale: float, fmt: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or math.isnan(mean):  # no finished run, or a figure undefined in that geometry
        return "n/a"
    if math.isinf(mean):
        return f"{mean}"
    return f"{scale * mean:{fmt}} ± {scale * std:.2g}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-cell markdown table (mean ± std over seeds)."""
    header = ["geometry", "optimiser", "runs", *(t for t, *_ in TABLE_COLUMNS), "s/epoch ÷ Eucl. LPC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = str(row["runs"])
        if row["failed"]:
            runs += f" ({row['failed']} failed)"
        if row["collapsed_to_origin"]:
            runs += f" ({row['collapsed_to_origin']} at origin)"
        cells = [row["geometry"], f"{row['optimizer']} ({row['optimizer_name']})", runs]
        cells += [_cell_text(row, key, scale, fmt) for _, key, scale, fmt in TABLE_COLUMNS]
        relative = row["epoch_seconds_relative"]
        cells.append(f"{relative:.2f}" if math.isfinite(relative) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lpc_vs_nopen(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Euclidean LPC against NoPen per optimiser: the paper's pattern, in words (ratios of cell means)."""
    by_key = {(r["geometry"], r["optimizer"]): r for r in rows}
    lines = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
        lpc, nopen = by_key.get(("euclidean-LPC", optimizer)), by_key.get(("euclidean-NoPen", optimizer))
        if not lpc or not nopen or not lpc["runs"] or not nopen["runs"]:
            continue
        sep = lpc["train_separation_ratio_mean"] / nopen["train_separation_ratio_mean"]
        rob, refined, minimum = (lpc.get(f"{key}_mean", math.nan) / nopen.get(f"{key}_mean", math.nan)
                                 for key in ATTACKS.values())
        acc = 100 * (lpc["final_test_acc_mean"] - nopen["final_test_acc_mean"])
        lines.append(f"- {optimizer}: Euclidean LPC vs NoPen: separation ratio (train) x{sep:.3g}, "
                     f"DeepFool robustness x{rob:.3g} (refined x{refined:.3g}, FMN x{minimum:.3g}), "
                     f"test accuracy {acc:+.1f} points")
    return lines


# --------------------------------------------------------------------------------------------- analyses
@dataclass
class _LoadedRun:
    record: dict[str, Any]
    latents: np.ndarray
    labels: np.ndarray
    history: list[dict[str, Any]]
    manifold: Any


def _load_runs(records: Sequence[Mapping[str, Any]], split: str = "train",
               trust_backbone: bool | str = False) -> list[_LoadedRun]:
    """Latents, history and head manifold of every finished run (datasets loaded once per config)."""
    from lpc_geom.data import load_dataset
    from lpc_geom.experiments.runs import load_run

    datasets: dict[str, Any] = {}
    loaded = []
    for record in records:
        if record.get("status") != "ok":
            continue
        run = load_run(record["run_dir"], trust_backbone=trust_backbone)
        key = json.dumps([run.config.dataset, run.config.dataset_options], sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(run.config.dataset, **run.config.dataset_options)
        manifold = getattr(run.model(datasets[key]).head, "manifold", None)
        loaded.append(_LoadedRun(dict(record), run.arrays[f"{split}_latents"], run.arrays[f"{split}_labels"],
                                 run.history, manifold))
    return loaded


def gw_matrices(loaded: Sequence[_LoadedRun], *, restarts: int = 5) -> dict[str, dict[str, Any]]:
    """Gromov-Wasserstein discrepancies between the geometries' class-centre configurations.

    For each optimiser cell, entry ``(a, b)`` is the mean of
    :func:`lpc_geom.analysis.transport.compare` (class centres of the training latents, each in the
    geometry of its head, distances normalised by their mean) over every pair of distinct runs, one of
    geometry ``a`` and one of ``b``; the diagonal compares the seeds of one geometry with each other (the
    noise floor), and is NaN with a single seed. Pairs that cannot be compared (every class centre on one
    point) are left out and listed in ``errors``.

    Returns
    -------
    dict
        ``{optimiser: {"geometries": [...], "matrix": [[...]], "pairs": [[...]], "errors": [...]}}``.
    """
    from lpc_geom.analysis.transport import compare

    result: dict[str, dict[str, Any]] = {}
    for optimizer in dict.fromkeys(r.record["optimizer"] for r in loaded):
        runs = [r for r in loaded if r.record["optimizer"] == optimizer]
        geometries = list(dict.fromkeys(r.record["geometry"] for r in runs))
        index = {g: i for i, g in enumerate(geometries)}
        sums = np.zeros((len(geometries),) * 2)
        counts = np.zeros_like(sums, dtype=int)
        errors = []
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                try:
                    value = compare(a.latents, a.labels, b.latents, b.labels, manifold_a=a.manifold,
                                    manifold_b=b.manifold, restarts=restarts)
                except ValueError as exc:
                    errors.append(f"{a.record['name']} vs {b.record['name']}: {exc}")
                    continue
                ia, ib = index[a.record["geometry"]], index[b.record["geometry"]]
                for p, q in {(ia, ib), (ib, ia)}:
                    sums[p, q] += value
                    counts[p, q] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        result[optimizer] = {"geometries": geometries, "matrix": matrix.tolist(), "pairs": counts.tolist(),
                             "errors": errors}
    return result


def separation_robustness(records: Sequence[Mapping[str, Any]], key: str = ATTACKS["DeepFool"],
                          exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Pearson correlation, over finished runs, of the training separation ratio and a robustness figure.

    Parameters
    ----------
    records : sequence of dict
        Run records.
    key : str, default DeepFool's mean relative distance
        The robustness field (one of :data:`ATTACKS`' values, or any other).
    exclude : sequence of str
        Geometry cells left out.

    Returns
    -------
    dict
        ``n`` (runs with both figures finite), ``pearson`` (separation ratio vs robustness, as the
        paper reports it), ``pearson_log`` (log10 separation ratio vs robustness: the ratio spans
        decades); NaN when fewer than 3 runs or a constant variable.
    """
    pairs = [(r["train_separation_ratio"], r[key]) for r in records
             if r.get("status") == "ok" and r.get("geometry") not in exclude
             and _number(r.get("train_separation_ratio")) and _number(r.get(key))
             and math.isfinite(r["train_separation_ratio"]) and r["train_separation_ratio"] > 0
             and math.isfinite(r[key])]
    out: dict[str, Any] = {"n": len(pairs), "pearson": math.nan, "pearson_log": math.nan}
    if len(pairs) >= 3:
        sep, rob = np.array(pairs).T
        for name, x in (("pearson", sep), ("pearson_log", np.log10(sep))):
            if np.std(x) > 0 and np.std(rob) > 0:
                out[name] = float(np.corrcoef(x, rob)[0, 1])
    return out


def correlations_by_attack(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`separation_robustness` for every attack of :data:`ATTACKS`, over all runs and without the
    :data:`CORRELATION_EXCLUDED` cells.

    Returns
    -------
    dict
        ``{attack: {"all": {...}, "without sphere": {...}}}``.
    """
    without = "without " + "/".join(CORRELATION_EXCLUDED)
    return {name: {"all": separation_robustness(records, key),
                   without: separation_robustness(records, key, exclude=CORRELATION_EXCLUDED)}
            for name, key in ATTACKS.items()}


def correlation_lines(by_attack: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """The correlations of :func:`correlations_by_attack`, one markdown bullet per attack."""
    lines = []
    for name, subsets in by_attack.items():
        parts = [f"{subset}: r = {c['pearson']:.3f} (log10 ratio {c['pearson_log']:.3f}, {c['n']} runs)"
                 for subset, c in subsets.items()]
        lines.append(f"- separation ratio vs {name} robustness, Pearson " + "; ".join(parts))
    return lines


