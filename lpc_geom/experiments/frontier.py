"""The accuracy-vs-collapse frontier of one dataset: LPC at a few gamma ceilings beside LinPen and NoPen.

:func:`frontier_jobs` turns a base :class:`~lpc_geom.config.TrainConfig` into one sweep job per
(variant, seed): the LPC row under a schedule that reaches each ceiling ``gamma_max`` (the base config's,
or the paper's ``exponential`` when the base uses the ``adaptive`` controller, which stops where it
likes), the LPC row under the ``adaptive`` controller, and the LinPen (same linear bottleneck, no penalty)
and NoPen rows. :func:`run_frontier` trains them with :func:`lpc_geom.experiments.sweep.run_jobs`
(finished runs are reused, half-trained ones resume, failures are listed), averages over seeds and writes,
under its output directory:

- ``frontier.csv`` / ``frontier.json``: one row per variant, mean and std over seeds of the test accuracy
  and of the separation ratio of the training and of the test latents;
- ``runs.json``: every run's record;
- ``frontier.png``: test accuracy against the training (left) and test (right) separation ratio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpc_geom.ablation import get_row
from lpc_geom.config import TrainConfig
from lpc_geom.experiments.sweep import Job, aggregate, failure_lines, run_jobs
from lpc_geom.experiments.tables import csv_text
from lpc_geom.train.checkpoint import write_json, write_text
from lpc_geom.train.schedules import GAMMA_SCHEDULES, gamma_option_names

#: Default gamma ceilings of ``lpc-geom sweep-gamma``.
DEFAULT_GAMMA_MAX = (0.01, 0.1, 1.0, 10.0)
#: Rows trained beside the LPC variants (no penalty: gamma does not act on them).
BASELINE_ROWS = ("LinPen", "NoPen")
#: The frontier's separation axes are logarithmic when their values span more than this factor.
LOG_SPAN = 10.0
#: Columns of the frontier table (record field, heading).
COLUMNS = (("final_test_acc", "test acc %"), ("train_separation_ratio", "sep. ratio (train)"),
           ("test_separation_ratio", "sep. ratio (test)"))


def _options_for(schedule: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that ``schedule`` accepts (another schedule's options are dropped)."""
    accepted = gamma_option_names(GAMMA_SCHEDULES[schedule])
    return {k: v for k, v in options.items() if k in accepted}


def frontier_jobs(base: TrainConfig, gamma_max: Sequence[float], seeds: Sequence[int], out: Path) -> list[Job]:
    """One job per (variant, seed): LPC at each ceiling, LPC adaptive, LinPen, NoPen; runs in ``out/runs``.

    Parameters
    ----------
    base : TrainConfig
        Data, backbone, optimisation and gamma options; its row, seed and run directory are set per job.
    gamma_max : sequence of float
        The ceilings, each > 0 and at least the schedule's start.
    seeds : sequence of int
    out : Path

    Raises
    ------
    ValueError
        No ceiling, a repeated one, or no seed.
    """
    if not gamma_max or len(set(gamma_max)) != len(gamma_max):
        raise ValueError(f"--gamma-max needs one or more distinct values, got {list(gamma_max)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs one or more distinct seeds, got {list(seeds)}")
    ceiling = "exponential" if base.gamma_schedule == "adaptive" else base.gamma_schedule
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for g in gamma_max:
        options = {**_options_for(ceiling, base.gamma_options), "gamma_max": float(g)}
        variants.append((f"LPC-gmax{g:g}", {"row": "LPC", "schedule": ceiling, "gamma_max": float(g)},
                         {"row": "LPC", "gamma_schedule": ceiling, "gamma_options": options}))
    variants.append(("LPC-adaptive", {"row": "LPC", "schedule": "adaptive", "gamma_max": None},
                     {"row": "LPC", "gamma_schedule": "adaptive",
                      "gamma_options": _options_for("adaptive", base.gamma_options)}))
    for row in BASELINE_ROWS:  # the ceiling schedule: no validation split held out of their training data
        changes = {"row": row, "gamma_schedule": ceiling, "gamma_options": _options_for(ceiling, base.gamma_options)}
        if get_row(row).penultimate == "none":  # no penultimate layer whose width latent_dim could set
            changes["latent_dim"] = None
        variants.append((row, {"row": row, "schedule": "none", "gamma_max": None}, changes))
    jobs = []
    for variant, cell, changes in variants:
        for seed in seeds:
            name = f"{variant}-s{seed}"
            config = base.replace(**changes, seed=seed, out_dir=str(out / "runs" / name))
            jobs.append(Job(name, config, {"variant": variant, **cell}))
    return jobs


@dataclass
class FrontierResult:
    """What :func:`run_frontier` returns: the per-variant rows, every record, the table and the files."""

    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    table: str
    figure: Path | None
    failures: list[str]


def frontier_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per variant (:func:`~lpc_geom.experiments.sweep.aggregate`), in job order,
    limited to the cell keys, the run counts and the :data:`COLUMNS`."""
    keep = ("variant", "row", "schedule", "gamma_max", "runs", "failed")
    rows = []
    for row in aggregate(records, by=["variant"]):
        first = next(r for r in records if r["variant"] == row["variant"])
        entry = {k: (row[k] if k in row else first.get(k)) for k in keep}
        for key, _ in COLUMNS:
            for stat in ("mean", "std"):
                entry[f"{key}_{stat}"] = row.get(f"{key}_{stat}", math.nan)
        rows.append(entry)
    return rows


def frontier_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table: variant, runs, then mean ± std of each of the :data:`COLUMNS`."""
    headings = ["variant", "runs", *(heading for _, heading in COLUMNS)]
    lines = []
    for row in rows:
        cells = [str(row["variant"]), f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")]
        for key, _ in COLUMNS:
            scale = 100.0 if key == "final_test_acc" else 1.0
            mean, std = row[f"{key}_mean"] * scale, row[f"{key}_std"] * scale
            cells.append("n/a" if math.isnan(mean) else f"{mean:.3g} ± {std:.2g}")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headings)]
    text = [headings, ["-" * w for w in widths], *lines]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in text)


def draw_frontier(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str = "") -> Path:
    """Test accuracy against the separation ratio of the training (left) and test (right) latents.

    The LPC ceilings are joined by a line in ceiling order and labelled with their ``gamma_max``; the
    adaptive controller, LinPen and NoPen are single markers. Error bars: std over seeds. The legend sits
    outside both panels; a separation axis is logarithmic when its values span more than :data:`LOG_SPAN`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    ceilings = [r for r in rows if r["schedule"] not in ("adaptive", "none")]
    ceilings.sort(key=lambda r: r["gamma_max"])
    singles = [r for r in rows if r not in ceilings]
    markers = {"LPC-adaptive": "*", "LinPen": "s", "NoPen": "D"}
    for ax, split in zip(axes, ("train", "test"), strict=True):
        key = f"{split}_separation_ratio"
        if ceilings:
            ax.errorbar([r[f"{key}_mean"] for r in ceilings], [100 * r["final_test_acc_mean"] for r in ceilings],
                        xerr=[r[f"{key}_std"] for r in ceilings],
                        yerr=[100 * r["final_test_acc_std"] for r in ceilings], marker="o", color="C0",
                        capsize=2, label=f"LPC, {ceilings[0]['schedule']} gamma up to gamma_max")
            for r in ceilings:
                ax.annotate(f"{r['gamma_max']:g}", (r[f"{key}_mean"], 100 * r["final_test_acc_mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8, color="C0")
        for i, r in enumerate(singles):
            ax.errorbar([r[f"{key}_mean"]], [100 * r["final_test_acc_mean"]], xerr=[r[f"{key}_std"]],
                        yerr=[100 * r["final_test_acc_std"]], marker=markers.get(r["variant"], "^"),
                        markersize=10 if r["variant"] == "LPC-adaptive" else 7, linestyle="none",
                        color=f"C{i + 1}", capsize=2,
                        label="LPC, adaptive gamma" if r["variant"] == "LPC-adaptive" else r["variant"])
        values = [r[f"{key}_mean"] for r in rows if r[f"{key}_mean"] > 0]
        log = bool(values) and max(values) > LOG_SPAN * min(values)  # a narrower span reads better linearly
        if log:
            from lpc_geom.experiments.plots import readable_log_axis

            ax.set_xscale("log")
            readable_log_axis(ax.xaxis)
        ax.set_xlabel(f"separation ratio of the {'training' if split == 'train' else 'test'} latents\n"
                      f"(between-class / within-class spread{', log scale' if log else ''})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path


def run_frontier(base: TrainConfig, out: Path, *, gamma_max: Sequence[float] = DEFAULT_GAMMA_MAX,
                 seeds: Sequence[int] = (0,), workers: int = 1, progress: bool = True,
                 log=print) -> FrontierResult:
    """Train (or resume) every job of :func:`frontier_jobs`, write the table, the records and the figure.

    A variant all of whose runs failed has no point in the figure (the table says ``n/a``); the failures
    are logged last and returned.
    """
    out = Path(out)
    jobs = frontier_jobs(base, gamma_max, seeds, out)
    log(f"sweep-gamma: {len(jobs)} runs ({len(jobs) // len(seeds)} variants x {len(seeds)} seeds); "
        f"{base.dataset} {json.dumps(base.dataset_options)}, {base.backbone}, {base.epochs} epochs; "
        f"results in {out.resolve()}")
    records = run_jobs(jobs, workers=workers, progress=progress)
    rows = frontier_rows(records)
    table = frontier_table(rows)
    write_json(records, out / "runs.json")
    write_json(rows, out / "frontier.json")
    write_text(csv_text(rows), out / "frontier.csv")
    drawn = [r for r in rows if not math.isnan(r["final_test_acc_mean"])]
    figure = draw_frontier(drawn, out / "frontier.png",
                           title=f"{base.dataset}, {base.backbone}, {base.epochs} epochs, seeds {list(seeds)}"
                           ) if drawn else None
    log("\n" + table)
    log(f"\nwritten to {out.resolve()}: frontier.csv/json (one row per variant), runs.json, "
        + ("frontier.png" if figure else "no figure (every run failed)"))
    failures = failure_lines(records)
    if failures:
        log("\n" + "\n".join(failures) + "\nlaunch the same command again to retry them")
    return FrontierResult(rows, records, table, figure, failures)
