"""The paper's ablation on MNIST-1D: every row x seeds, collapse figures of the training latents.

The acceptance criteria measured here: LPC (intermediate width) against NoPen on MNIST-1D with the
default MLP backbone -- test accuracy no lower than NoPen's minus 1 point, separation ratio at least 50x
NoPen's, sigma_W / sigma_T below 1e-4 and norm CV below 0.05 (train latents, mean over seeds). The figure
(separation_vs_robustness.png) plots every run's separation ratio against its DeepFool distance, one
colour and marker per row.

    python benchmarks/bench_ablation.py                      # all rows, 3 seeds, 2 worker processes
    python benchmarks/bench_ablation.py --rows LPC NoPen --seeds 0 --epochs 20   # a quick look

Writes runs under --out, and ablation_runs.csv/json (one row per run), ablation.csv/json (mean and
std per row) and ablation.md (the table) next to them. Finished runs are skipped on re-launch, half-trained
ones resume from their checkpoints. Exit status 0 when every run finished, 1 when any failed (listed at
the end).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import numpy as np
from _results import add_results_argument, write_fragment
from scipy.stats import pearsonr

from lpc_geom.ablation import ROWS
from lpc_geom.config import load_config
from lpc_geom.experiments.demo import demo_config
from lpc_geom.experiments.plots import figure_separation_robustness, save_figure
from lpc_geom.experiments.runs import robustness_run
from lpc_geom.experiments.sweep import (
    Job,
    aggregate,
    default_workers,
    exit_status,
    failure_lines,
    finished_record,
    run_jobs,
)
from lpc_geom.experiments.tables import csv_text
from lpc_geom.train.checkpoint import write_json, write_text

COLUMNS = (
    ("test acc %", "final_test_acc", 100.0),
    ("sep. ratio", "train_separation_ratio", 1.0),
    ("sigma_W/sigma_T", "train_sigma_w_rel", 1.0),
    ("norm CV", "train_norm_cv", 1.0),
    ("entropy/dim", "train_entropy", 1.0),
    ("NC1", "train_nc1", 1.0),
    ("ETF dist.", "train_etf_distance", 1.0),
    ("DeepFool ‖r‖/‖x‖", "robust_deepfool_mean_relative_norm", 1.0),
    ("s/epoch", "epoch_seconds_median", 1.0),
)
ROBUSTNESS = "robust_deepfool_mean_relative_norm"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help="ablation rows (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--config", default=None,
                        help="base TrainConfig file (TOML/YAML/JSON; default: the embedded recipe "
                             "lpc_geom/configs/mnist1d_lpc.toml); every run overrides row and seed")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--out", default="results/ablation", help="output directory")
    parser.add_argument("--robustness-samples", type=int, default=1000,
                        help="test inputs for DeepFool per run (0: skip robustness)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the runs of the grid that already finished under --out")
    add_results_argument(parser, "bench_ablation")
    return parser.parse_args(argv)


def cell_text(row: dict, key: str, scale: float) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return "n/a"
    return f"{scale * mean:.3g} ± {scale * std:.2g}"


def markdown(rows: list[dict]) -> str:
    header = ["row", "runs", *(title for title, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["row"], str(row["runs"]) + (f" ({row['failed']} failed)" if row["failed"] else "")]
        cells += [cell_text(row, key, scale) for _, key, scale in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def acceptance(rows: dict[str, dict]) -> list[tuple[str, bool, str]]:
    """The four acceptance criteria, LPC against NoPen (means over seeds)."""
    lpc, nopen = rows.get("LPC"), rows.get("NoPen")
    if lpc is None or nopen is None or not lpc["runs"] or not nopen["runs"]:
        return []
    acc_gap = 100 * (lpc["final_test_acc_mean"] - nopen["final_test_acc_mean"])
    ratio = lpc["train_separation_ratio_mean"] / nopen["train_separation_ratio_mean"]
    return [
        ("test accuracy >= NoPen - 1 point", acc_gap >= -1.0, f"LPC - NoPen = {acc_gap:+.2f} points"),
        ("separation ratio >= 50x NoPen", ratio >= 50, f"ratio {ratio:.1f}x"),
        ("sigma_W/sigma_T < 1e-4", lpc["train_sigma_w_rel_mean"] < 1e-4, f"{lpc['train_sigma_w_rel_mean']:.3g}"),
        ("norm CV < 0.05", lpc["train_norm_cv_mean"] < 0.05, f"{lpc['train_norm_cv_mean']:.3g}"),
    ]


def robustness_figures(job: Job, samples: int) -> dict:
    """DeepFool (paper semantics) on a seeded subsample of the test set, keys prefixed ``robust_``."""
    report = robustness_run(job.run_dir, samples=samples, lipschitz=False)
    return {f"robust_{key}": value for key, value in report.items()}


def separation_robustness_figure(records: list[dict]):
    """The paper's Fig. 3: train separation ratio against DeepFool robustness, every run, one colour and
    marker per row (:func:`~lpc_geom.experiments.plots.figure_separation_robustness`), with Pearson r.

    Returns ``(figure, statistics)``, or ``(None, {})`` with fewer than three finished runs that have both
    figures.
    """
    ok = [r for r in records if r.get("status") == "ok" and ROBUSTNESS in r
          and np.isfinite(r["train_separation_ratio"]) and np.isfinite(r[ROBUSTNESS])]
    if len(ok) < 3:
        return None, {}
    x = np.array([r["train_separation_ratio"] for r in ok])
    y = np.array([r[ROBUSTNESS] for r in ok])
    stats = {"pearson_r": float(pearsonr(x, y)[0]), "pearson_r_log": float(pearsonr(np.log(x), np.log(y))[0]),
             "runs": len(ok)}
    groups = {row: ([r["train_separation_ratio"] for r in ok if r["row"] == row],
                    [r[ROBUSTNESS] for r in ok if r["row"] == row])
              for row in dict.fromkeys(r["row"] for r in ok)}
    title = (f"Pearson r = {stats['pearson_r']:.2f} (between the logarithms: {stats['pearson_r_log']:.2f}), "
             f"{len(ok)} runs")
    return figure_separation_robustness(groups, title=title), stats


def main(argv=None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; accepted: {', '.join(ROWS)}")
    out = Path(args.out)
    base = (load_config(args.config) if args.config else demo_config()).replace(progress=False)
    if args.epochs is not None:
        base = base.replace(epochs=args.epochs)
    jobs = [
        Job(f"{row}-seed{seed}", base.replace(row=row, seed=seed, out_dir=str(out / "runs" / f"{row}-seed{seed}")),
            {"row": row})
        for row in args.rows for seed in args.seeds
    ]
    print(f"{len(jobs)} runs ({len(args.rows)} rows x {len(args.seeds)} seeds), {base.epochs} epochs each, "
          f"{args.workers} worker process(es); results in {out.resolve()}", flush=True)
    if args.report_only:
        missing = [job.name for job in jobs if finished_record(job) is None]
        jobs = [job for job in jobs if job.name not in missing]
        print(f"report only: {len(jobs)} finished runs" + (f"; not run: {', '.join(missing)}" if missing else ""))
    postprocess = (functools.partial(robustness_figures, samples=args.robustness_samples)
                   if args.robustness_samples > 0 else None)
    records = run_jobs(jobs, workers=args.workers, progress=not args.no_progress, postprocess=postprocess)
    table = aggregate(records, by=["row"])
    by_row = {row["row"]: row for row in table}
    text = markdown(table)
    checks = acceptance(by_row)
    lines = [f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})" for name, ok, detail in checks]
    figure = out / "separation_vs_robustness.png"
    drawn, correlation = separation_robustness_figure(records)
    if drawn is not None:
        save_figure(drawn, figure)
        lines.append(f"\nSeparation ratio vs DeepFool robustness over {correlation['runs']} runs: Pearson r = "
                     f"{correlation['pearson_r']:.3f} (log-log {correlation['pearson_r_log']:.3f}); "
                     f"figure: {figure}")
    report = (f"{base.dataset}, {base.backbone} backbone, optimiser {base.optimizer}, {base.epochs} epochs, "
              f"seeds {args.seeds}; collapse figures of the "
              f"train latents, accuracy and DeepFool on the test set (mean ± std over seeds)\n\n{text}\n\n"
              "Acceptance (LPC vs NoPen):\n" + "\n".join(lines))
    print("\n" + report)
    write_text(report + "\n", out / "ablation.md")
    write_json(records, out / "ablation_runs.json")
    write_text(csv_text(records), out / "ablation_runs.csv")
    write_json(table, out / "ablation.json")
    write_text(csv_text(table), out / "ablation.csv")
    print(f"\nwritten: {out / 'ablation.md'}, ablation.csv/json, ablation_runs.csv/json")
    fragment = report.replace(f"; figure: {figure}", "")
    if correlation:
        fragment += "\n\n![separation ratio against DeepFool robustness, every run](separation_vs_robustness.png)"
    write_fragment(args.results_dir, f"The ablation rows on {base.dataset}", fragment,
                   figures={figure.name: figure} if correlation else {},
                   data={"rows": table, "correlation": correlation,
                         "acceptance": [{"criterion": n, "pass": ok, "detail": d} for n, ok, d in checks]},
                   load_before=load_before)
    failures = failure_lines(records)
    if failures:
        print("\n" + "\n".join(failures) + "\nlaunch the same command again to retry them", file=sys.stderr)
    return exit_status(records)


if __name__ == "__main__":
    sys.exit(main())
