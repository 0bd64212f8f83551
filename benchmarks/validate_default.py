"""Does the default of ``lpc-geom train`` (LPC under the ``adaptive`` gamma controller) keep its accuracy?

Trains, on several datasets of different kinds, LPC with the default ``adaptive`` gamma controller beside
LinPen (the same linear bottleneck, no penalty) and NoPen (backbone -> classifier), a few seeds each, and
checks per dataset (means over seeds):

* LPC's test accuracy is within 1 point of LinPen's and within 2 points of NoPen's;
* LPC's separation ratio on the training latents is at least 5x NoPen's.

    python benchmarks/validate_default.py                          # every dataset, 3 seeds
    python benchmarks/validate_default.py --datasets digits-vectors blobs-hard --seeds 0 --epochs 20
    python benchmarks/validate_default.py --quick                  # smoke run: tiny data, 2 epochs

The datasets (:data:`DATASETS`) are generated or bundled (nothing is downloaded); the generated ones and
every split take the run's seed. ``spirals-npz`` is written by this script as a real ``.npz`` archive
(:func:`lpc_geom.data.save_npz`) under ``--out`` and read back by the ``npz`` loader. Everything but the
row, the schedule and the seed is the default :class:`~lpc_geom.config.TrainConfig`, except
``--epochs`` and the size options of each dataset. LinPen and NoPen, which have no penalty, are trained
under the paper's schedule, which holds nothing out: they see every training sample, while LPC's
controller holds out its validation split, as the default does. The controller scales its windows and
its growth step with the run's ``--epochs`` itself (:class:`~lpc_geom.train.schedules.AdaptiveGamma`).

Writes, under ``--out``: the runs, ``validate_runs.json`` (every run's record), ``validate.csv`` /
``validate.json`` (mean and std per dataset and row, with the criteria) and ``validate.md`` (the table);
and the documentation's results fragment (``--results-dir``). Finished runs are reused on re-launch.
Exit status 0 when every run finished (whatever the criteria say), 1 when any failed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_results_argument, write_fragment

from lpc_geom.config import TrainConfig
from lpc_geom.data import make_spirals, save_npz
from lpc_geom.experiments.sweep import Job, aggregate, exit_status, failure_lines, run_jobs
from lpc_geom.experiments.tables import csv_text
from lpc_geom.train.checkpoint import read_json, write_json, write_text
from lpc_geom.train.run_dir import HISTORY
from lpc_geom.train.schedules import BACK_OFF, GROW, build_gamma_schedule

#: The rows compared, and the schedule each is trained under.
ROWS = (("LPC", "adaptive"), ("LinPen", "exponential"), ("NoPen", "exponential"))
#: Criteria: LPC's accuracy may trail LinPen's / NoPen's by at most these (fractions); separation >= ratio x NoPen.
MAX_LOSS_VS_LINPEN, MAX_LOSS_VS_NOPEN, MIN_SEPARATION_FACTOR = 0.01, 0.02, 5.0


@dataclass(frozen=True)
class Spec:
    """One dataset of the validation: a registry dataset, its options, the backbone it is trained with."""

    kind: str
    dataset: str
    options: dict[str, Any]
    backbone: str = "mlp"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)  # size options of the --quick run


#: The validation datasets by name. ``spirals-npz``'s options are those of the generator whose output is
#: written to the ``.npz`` file.
DATASETS: dict[str, Spec] = {
    "mnist1d": Spec("1-D signals, 10 classes", "mnist1d", {"num_samples": 4000}, quick={"num_samples": 200}),
    "digits-vectors": Spec("8x8 digits as 64-vectors, 10 classes", "digits", {"flatten": True}),
    "digits-images": Spec("8x8 digits as images, ResNet-18 (width 8)", "digits", {"flatten": False},
                          backbone="resnet18", backbone_options={"width": 8}),
    "blobs-hard": Spec("overlapping Gaussian blobs, 10 classes in 32-D", "blobs",
                       {"num_classes": 10, "dim": 32, "num_samples": 1500, "separation": 2.5},
                       quick={"num_samples": 200}),
    "classif-3c": Spec("make_classification, 3 classes, 20 features, 5 % label noise", "classification",
                       {"num_classes": 3, "num_features": 20, "num_informative": 6, "num_samples": 1200,
                        "class_sep": 1.0, "flip_y": 0.05}, quick={"num_samples": 200}),
    "classif-5c": Spec("make_classification, 5 classes, 20 features, weak separation", "classification",
                       {"num_classes": 5, "num_features": 20, "num_informative": 10, "num_samples": 1500,
                        "class_sep": 0.7, "flip_y": 0.01}, quick={"num_samples": 200}),
    "classif-8c": Spec("make_classification, 8 classes, 40 features, 10 % label noise", "classification",
                       {"num_classes": 8, "num_features": 40, "num_informative": 15, "num_samples": 2000,
                        "clusters_per_class": 3, "class_sep": 1.5, "flip_y": 0.1}, quick={"num_samples": 240}),
    "spirals-npz": Spec("3 interleaved spirals in 2-D, from an .npz file", "npz",
                        {"num_classes": 3, "num_samples": 1200, "turns": 1.5, "noise": 0.08},
                        quick={"num_samples": 150}),
}
#: Datasets of the --quick smoke run (one of each loader kind the grid uses, MLP and ResNet).
QUICK_DATASETS = ("digits-images", "classif-3c", "spirals-npz")
QUICK_BACKBONES = {"mlp": {"hidden": [32]}, "resnet18": {"width": 2}}

COLUMNS = (("test acc %", "final_test_acc", 100.0), ("train acc %", "final_train_acc_eval", 100.0),
           ("sep. train", "train_separation_ratio", 1.0), ("sep. test", "test_separation_ratio", 1.0))
#: Columns of the LPC rows only: what the controller did (gamma does not act on LinPen and NoPen).
CONTROLLER_COLUMNS = (("final gamma", "final_gamma", 1.0), ("peak gamma", "peak_gamma", 1.0),
                      ("growth from epoch", "growth_epoch", 1.0), ("back-offs", "backed_off", 1.0),
                      ("first back-off", "backoff_epoch", 1.0), ("tolerance (pt)", "mean_tolerance", 100.0))


def controller_settings(epochs: int) -> dict[str, Any]:
    """The default controller's derived settings for an ``epochs``-long run (for the fragment's text)."""
    controller = build_gamma_schedule("adaptive", run_epochs=epochs)
    return {"initial_step": controller.initial_step(), "growth_epochs": controller.growth_epochs(),
            "lag": controller.lag, "smoothing": controller.smoothing, "patience": controller.patience,
            "tolerance": controller.tolerance, "validation_fraction": controller.validation_fraction,
            "noise_window": controller.noise_window(), "gamma_floor": controller.gamma_floor()}


def dataset_options(name: str, spec: Spec, seed: int, out: Path, quick: bool) -> dict[str, Any]:
    """The registry options of ``spec`` for one seed (writing the ``.npz`` file of ``spirals-npz``)."""
    options = {**spec.options, **(spec.quick if quick else {})}
    if spec.dataset == "npz":
        path = out / "data" / f"{name}-s{seed}.npz"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_npz(make_spirals(**options, seed=seed), path)
        return {"path": str(path), "name": name}
    options.setdefault("seed", seed)
    return options


def build_jobs(names: Sequence[str], seeds: Sequence[int], epochs: int, out: Path, *,
               quick: bool = False) -> list[Job]:
    """One job per (dataset, row, seed): the default config but for the row, schedule, data and epochs."""
    jobs = []
    for name in names:
        spec = DATASETS[name]
        backbone_options = QUICK_BACKBONES[spec.backbone] if quick else spec.backbone_options
        for row, schedule in ROWS:
            for seed in seeds:
                run = f"{name}-{row}-s{seed}"
                config = TrainConfig(
                    dataset=spec.dataset, dataset_options=dataset_options(name, spec, seed, out, quick),
                    backbone=spec.backbone, backbone_options=backbone_options, row=row, gamma_schedule=schedule,
                    epochs=epochs,
                    seed=seed, progress=False, out_dir=str(out / "runs" / run),
                    checkpoint_every=max(1, epochs // 4))
                jobs.append(Job(run, config, {"dataset": name, "row": row, "schedule": schedule}))
    return jobs


def controller_summary(job: Job) -> dict[str, Any]:
    """What the adaptive controller did in a run (from its history): the epoch growth started (the end of the
    warm-up), the back-offs and the first one's epoch, the gamma reached, the mean tolerance."""
    history = read_json(job.run_dir / HISTORY)
    if job.config.gamma_schedule != "adaptive":
        return {}
    backed = [r["epoch"] for r in history if r.get("gamma_decision") == BACK_OFF]
    grown = [r["epoch"] for r in history if r.get("gamma_decision") == GROW]
    tolerances = [r["gamma_tolerance"] for r in history]
    # NaN when it never backed off (or grew): the mean over seeds is then that of the runs that did
    return {"backed_off": len(backed), "backoff_epoch": backed[0] if backed else math.nan,
            "growth_epoch": grown[0] if grown else math.nan,
            "peak_gamma": max(r["gamma"] for r in history), "best_val_acc": max(r["val_acc"] for r in history),
            "mean_tolerance": float(np.mean(tolerances))}


def summarise(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (dataset, row), in grid order."""
    rows = aggregate(records, by=["dataset", "row"])
    order = {(n, r): i for i, (n, r) in enumerate((n, r) for n in names for r, _ in ROWS)}
    return sorted(rows, key=lambda r: order.get((r["dataset"], r["row"]), len(order)))


def criteria(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per dataset: the three criteria on the means over seeds (None when a row has no finished run)."""
    by = {(r["dataset"], r["row"]): r for r in rows}
    out = []
    for name in names:
        lpc, lin, nop = (by.get((name, row)) for row, _ in ROWS)

        def mean(row, key):
            return math.nan if row is None or row.get("runs", 0) == 0 else row.get(f"{key}_mean", math.nan)

        acc, acc_lin, acc_nop = (mean(r, "final_test_acc") for r in (lpc, lin, nop))
        sep, sep_nop = mean(lpc, "train_separation_ratio"), mean(nop, "train_separation_ratio")
        entry = {"dataset": name, "kind": DATASETS[name].kind, "lpc_minus_linpen": acc - acc_lin,
                 "lpc_minus_nopen": acc - acc_nop, "separation_factor": sep / sep_nop}
        entry["vs_linpen"] = None if math.isnan(acc - acc_lin) else acc >= acc_lin - MAX_LOSS_VS_LINPEN - 1e-12
        entry["vs_nopen"] = None if math.isnan(acc - acc_nop) else acc >= acc_nop - MAX_LOSS_VS_NOPEN - 1e-12
        entry["separation"] = None if math.isnan(sep / sep_nop) else sep >= MIN_SEPARATION_FACTOR * sep_nop
        verdicts = [entry["vs_linpen"], entry["vs_nopen"], entry["separation"]]
        entry["all"] = None if None in verdicts else all(verdicts)
        out.append(entry)
    return out


def shown(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows limited to the cell, the run counts and the mean and std of the tabulated figures (the
    fragment's data; ``validate.csv`` keeps every field)."""
    keys = [key for _, key, _ in (*COLUMNS, *CONTROLLER_COLUMNS)] + ["peak_gamma", "best_val_acc"]
    return [{k: v for k, v in r.items() if k in ("dataset", "row", "runs", "failed")
             or any(k == f"{key}_{stat}" for key in keys for stat in ("mean", "std"))} for r in rows]


def _verdict(value: bool | None) -> str:
    return "n/a" if value is None else ("PASS" if value else "FAIL")


def _cell(row: Mapping[str, Any], key: str, scale: float) -> str:
    mean, std = row.get(f"{key}_mean", math.nan) * scale, row.get(f"{key}_std", math.nan) * scale
    if math.isnan(mean):
        return "n/a"
    digits = ".1f" if scale == 100.0 else ".3g"
    return f"{mean:{digits}} ± {std:{digits}}"


def markdown_tables(rows: Sequence[Mapping[str, Any]], verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The per-row table (mean ± std over seeds) and the per-dataset criteria table, as markdown."""
    head = ["dataset", "row", "runs", *(h for h, _, _ in (*COLUMNS, *CONTROLLER_COLUMNS))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        runs = f"{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        cells = [r["dataset"], r["row"], runs, *(_cell(r, key, s) for _, key, s in COLUMNS)]
        if r["row"] == "LPC":
            cells += [_cell(r, key, scale) for _, key, scale in CONTROLLER_COLUMNS]
        else:
            cells += [""] * len(CONTROLLER_COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + criteria_table(verdicts)


def criteria_table(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The per-dataset criteria (differences of means over seeds, PASS/FAIL), as markdown."""
    head = ["dataset", "kind", "LPC − LinPen (pt)", "≥ −1", "LPC − NoPen (pt)", "≥ −2", "sep. LPC / NoPen",
            "≥ 5x", "all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in verdicts:
        lines.append("| " + " | ".join([
            v["dataset"], v["kind"], f"{100 * v['lpc_minus_linpen']:+.1f}", _verdict(v["vs_linpen"]),
            f"{100 * v['lpc_minus_nopen']:+.1f}", _verdict(v["vs_nopen"]), f"{v['separation_factor']:.3g}",
            _verdict(v["separation"]), _verdict(v["all"])]) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None,
                        help="validation datasets (default: all; with --quick: " + ", ".join(QUICK_DATASETS) + ")")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 100; --quick: 2)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a few tiny datasets, tiny backbones, 2 epochs, one seed")
    parser.add_argument("--out", type=Path, default=Path("results/validate_default"), help="runs and tables")
    parser.add_argument("--previous", type=Path, default=None,
                        help="the validate.json of an earlier run (e.g. another version of the controller): its "
                             "LPC rows and criteria are shown beside this run's in the fragment")
    parser.add_argument("--previous-label", default="the earlier run", help="what --previous was (a phrase)")
    add_results_argument(parser, "validate_default")
    args = parser.parse_args(argv)
    args.datasets = args.datasets or list(QUICK_DATASETS if args.quick else DATASETS)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.epochs = args.epochs if args.epochs is not None else (2 if args.quick else 100)
    if args.epochs < 1 or args.workers < 1 or len(set(args.seeds)) != len(args.seeds):
        parser.error("--epochs and --workers must be >= 1 and --seeds distinct")
    return args


def main(argv=None) -> int:
    load_before = os.getloadavg()
    args = parse_args(argv)
    out = args.out
    jobs = build_jobs(args.datasets, args.seeds, args.epochs, out, quick=args.quick)
    settings = controller_settings(args.epochs)
    print(f"validate_default: {len(jobs)} runs ({len(args.datasets)} datasets x {len(ROWS)} rows x "
          f"{len(args.seeds)} seeds), {args.epochs} epochs, {args.workers} worker(s); results in "
          f"{out.resolve()}", flush=True)
    records = run_jobs(jobs, workers=args.workers, progress=True, postprocess=controller_summary)
    rows = summarise(records, args.datasets)
    verdicts = criteria(rows, args.datasets)
    tables = markdown_tables(rows, verdicts)
    write_json(records, out / "validate_runs.json")
    write_json({"rows": rows, "criteria": verdicts}, out / "validate.json")
    write_text(csv_text(rows), out / "validate.csv")
    write_text(tables + "\n", out / "validate.md")
    print("\n" + tables)
    failures = failure_lines(records)
    if failures:
        print("\n" + "\n".join(failures))
    passed = sum(v["all"] is True for v in verdicts)
    specs = "\n".join(f"- `{n}`: {DATASETS[n].kind}; `{DATASETS[n].dataset}` "
                      f"{ {**DATASETS[n].options, **(DATASETS[n].quick if args.quick else {})} }, "
                      f"backbone `{DATASETS[n].backbone}` "
                      f"{QUICK_BACKBONES[DATASETS[n].backbone] if args.quick else DATASETS[n].backbone_options}"
                      for n in args.datasets)
    body = (
        f"LPC under the default `adaptive` gamma controller against LinPen and NoPen: {len(args.datasets)} "
        f"datasets x {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.epochs} epochs per run, "
        f"otherwise the default `TrainConfig` (MLP 512-512 unless stated, AdamW lr 1e-3, batch 128, latent "
        f"width 64); the controller at its defaults: {100 * settings['validation_fraction']:g} % of the "
        f"training data held out, smoothing {settings['smoothing']:g}, warm-up until the training accuracy "
        f"plateaus, growth x{settings['initial_step']:.4g} per epoch (square-rooted at each back-off) "
        f"up to epoch {settings['growth_epochs']}, then held; tolerance max({100 * settings['tolerance']:g} pt, "
        "2 standard deviations of the smoothed accuracy, the smaller of the binomial bound of the split and the "
        f"noise measured over the last {settings['noise_window']} epochs), patience {settings['patience']}; a "
        "fall that persists at a gamma that did not grow divides it by the first step, its square, its fourth "
        f"power, ..., down to {settings['gamma_floor']:.2g}. LinPen and NoPen train on every training sample. "
        "Dataset seeds = run seeds. "
        "Mean ± std over seeds; separation ratios of the training (sep. train) and test (sep. test) latents; "
        "growth from epoch: the end of the warm-up; peak gamma: the largest gamma trained at.\n\nDatasets:\n\n"
        + specs + "\n\n" + tables
        + f"\n\nCriteria met on {passed} of {len(verdicts)} datasets (LPC within 1 point of LinPen and 2 of "
        "NoPen in test accuracy, training separation >= 5x NoPen's, on means over seeds).\n"
        + (("\n" + "\n".join(failures) + "\n") if failures else ""))
    previous = None
    if args.previous is not None:
        earlier = read_json(args.previous)
        previous = {"label": args.previous_label, "rows": shown(earlier["rows"]), "criteria": earlier["criteria"]}
    if previous is not None:
        lpc = [r for r in previous["rows"] if r["row"] == "LPC"]
        head = ["dataset", "runs", *(h for h, _, _ in COLUMNS), "final gamma", "back-offs"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in lpc:
            cells = [r["dataset"], str(r["runs"]), *(_cell(r, key, sc) for _, key, sc in COLUMNS),
                     _cell(r, "final_gamma", 1.0), _cell(r, "backed_off", 1.0)]
            lines.append("| " + " | ".join(cells) + " |")
        body += (f"\n### For comparison: {args.previous_label}\n\nLPC rows; the criteria compare them with that "
                 "run's own LinPen and NoPen rows:\n\n"
                 + "\n".join(lines) + "\n\n" + criteria_table(previous["criteria"]) + "\n")
    write_fragment(args.results_dir, "Validation of the default gamma controller", body,
                   data={"rows": shown(rows), "criteria": verdicts, "epochs": args.epochs, "seeds": args.seeds,
                         "controller": settings, "datasets": {n: DATASETS[n].options for n in args.datasets},
                         "previous": previous},
                   load_before=load_before)
    print(f"\nwritten to {out.resolve()} (validate.csv/json/md, validate_runs.json) and {args.results_dir}")
    return exit_status(records)


if __name__ == "__main__":
    sys.exit(main())
