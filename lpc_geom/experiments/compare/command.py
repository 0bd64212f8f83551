"""The comparison's command line: ``lpc-geom compare`` and ``benchmarks/compare_manifolds.py``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from lpc_geom.config import data_root_option, load_config, parse_override
from lpc_geom.experiments.compare.driver import CompareResult, run_compare
from lpc_geom.experiments.compare.grid import (
    DEFAULT_GEOMETRIES,
    DEFAULT_OPTIMIZERS,
    DEFAULT_OUT,
    DEFAULT_SEEDS,
    GEOMETRY_CELLS,
    OPTIMIZER_CELLS,
    CompareSettings,
    build_jobs,
    default_config,
)
from lpc_geom.experiments.executors import EXECUTORS, SweepExecutor, make_executor
from lpc_geom.experiments.sweep import default_workers, exit_status


def _key_values(pairs: Iterable[str], what: str) -> dict[str, Any]:
    out = {}
    for text in pairs:
        try:
            key, value = parse_override(text)
        except ValueError as exc:
            raise SystemExit(f"{what}: {exc}") from None
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``compare_manifolds`` command line (also ``python benchmarks/compare_manifolds.py --help``)."""
    parser = argparse.ArgumentParser(
        prog="lpc-geom compare",
        description="Compare latent point collapse across geometries (Euclidean LPC, the NoPen baseline, "
                    "sphere, Poincaré ball, Stiefel) and optimisers (AdamW / Riemannian Adam, K-FAC), over "
                    "seeds: train every run, analyse its latents in its own geometry, measure its "
                    "robustness, then write per-run and per-cell tables (CSV, JSON, markdown) and figures "
                    "(PNG). Finished runs are reused when the same command is launched again; a failed run "
                    "is recorded with its error and the others go on.",
        epilog="Examples:\n"
               "  lpc-geom compare                        # the default grid (20 runs)\n"
               "  lpc-geom compare --geometries euclidean-LPC sphere --optimizers "
               "default --seeds 0\n"
               "  lpc-geom compare --dataset digits --epochs 40 --out results/digits\n"
               "  lpc-geom compare --dry-run --seeds 0 1 2                      # list the runs it would start\n"
               "  lpc-geom compare --dataset cifar10 --data-root ~/data/cifar \\\n"
               "      --backbone resnet18 --set epochs=200 --executor submitit --slurm-partition gpu "
               "--gpus-per-node 1\n"
               "Outputs (under --out): table.md, runs.csv/json, cells.csv/json, analysis.json, figures/*.png, "
               "runs/<geometry>__<optimiser>__seed<k>/.\n"
               "Exit status: 0 when every run finished, 1 when any failed (listed at the end; the same command "
               "retries them), 130 on Ctrl-C. Half-trained runs resume from their checkpoints; a run whose "
               "worker process died is retried once; with --executor submitit a run that reaches "
               "--timeout-min is requeued and resumes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument("--geometries", nargs="+", default=list(DEFAULT_GEOMETRIES), choices=list(GEOMETRY_CELLS),
                      metavar="G", help=f"geometry cells, from {', '.join(GEOMETRY_CELLS)} "
                                        f"(default: {' '.join(DEFAULT_GEOMETRIES)})")
    grid.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS), choices=list(OPTIMIZER_CELLS),
                      metavar="O", help="optimiser cells: default (AdamW, Riemannian Adam for manifold heads), "
                                        "kfac (K-FAC + AdamW / Riemannian Adam) (default: both)")
    grid.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                      help="training seeds (default: 0 1)")
    training = parser.add_argument_group(
        "training (defaults: a 60-epoch compressed LPC recipe, 1-D ResNet-18 on MNIST-1D)")
    training.add_argument("--config", metavar="FILE",
                          help="base TrainConfig file (TOML/YAML/JSON) instead of the built-in default")
    training.add_argument("--dataset", help="dataset of lpc_geom.data (mnist1d, digits, blobs, cifar10, "
                                            "cifar100, npz); its options reset to the loader's defaults")
    training.add_argument("--data-root", help="CIFAR directory (cifar10/cifar100) or .npz file (npz), as for "
                                              "lpc-geom train")
    training.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                          help="dataset option, VALUE as JSON where it parses (repeatable), e.g. num_samples=8000")
    training.add_argument("--backbone", help="a backbone name (lpc-geom backbones) or an import path "
                                             "package.module:factory (options reset)")
    training.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                          help="backbone option (repeatable), e.g. hidden=[256,256]")
    training.add_argument("--epochs", type=int, help="epochs of every run (default: the base config's, 60)")
    training.add_argument("--latent-dim", type=int, help="penultimate width (default: the LPC row's, 64 for "
                                                         "<= 10 classes; poincare-2d always uses 2)")
    training.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="any other TrainConfig field (repeatable), e.g. lr=1e-3 or "
                               "gamma_options='{\"start\":0.01,\"factor\":1.1,\"gamma_max\":10}'")
    training.add_argument("--robustness-samples", type=int, default=500,
                          help="test inputs of each robustness measurement (default 500)")
    training.add_argument("--fmn-steps", type=int, default=100,
                          help="steps of the Fast Minimum-Norm attack of each robustness measurement (default 100, "
                               "from 0 and from DeepFool's point; 0: none)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    output.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("--dry-run", action="store_true",
                        help="list the runs the command would start (name, config, directory) and exit")
    execution = parser.add_argument_group("execution")
    execution.add_argument("--executor", choices=EXECUTORS, default="local",
                           help="local: worker processes on this machine; submitit: Slurm through submitit "
                                "(pip install 'lpc_geom[cluster]'), or its local/debug modes")
    execution.add_argument("--workers", type=int, default=default_workers(),
                           help="local worker processes, one thread each (default: one per core)")
    execution.add_argument("--submitit-cluster", choices=["auto", "slurm", "local", "debug"], default="auto",
                           help="submitit: auto (Slurm if sbatch is found, else local subprocesses), slurm, "
                                "local, or debug (jobs one by one in this process)")
    execution.add_argument("--submitit-folder", help="submitit logs (default: OUT/submitit)")
    execution.add_argument("--max-in-flight", type=int,
                           help="submitit: at most this many unfinished jobs (default: all at once on Slurm, "
                                "one per core locally)")
    execution.add_argument("--timeout-min", type=int, default=60, help="submitit: time limit per run (minutes)")
    execution.add_argument("--slurm-partition", help="submitit: Slurm partition")
    execution.add_argument("--cpus-per-task", type=int, help="submitit: CPUs per run")
    execution.add_argument("--gpus-per-node", type=int, help="submitit: GPUs per run")
    execution.add_argument("--mem-gb", type=float, help="submitit: memory per run (GB)")
    execution.add_argument("--submitit-param", action="append", default=[], metavar="KEY=VALUE",
                           help="any other AutoExecutor.update_parameters argument (repeatable), e.g. "
                                "slurm_account=myproject")
    return parser


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    """The :class:`CompareSettings` a parsed command line describes (errors name the bad flag)."""
    base = load_config(args.config, trust_backbone=args.backbone or False) if args.config else default_config()
    changes: dict[str, Any] = {}
    if args.dataset is not None:
        changes["dataset"], changes["dataset_options"] = args.dataset, {}
    if args.dataset_option:
        changes["dataset_options"] = {**changes.get("dataset_options", base.dataset_options),
                                      **_key_values(args.dataset_option, "--dataset-option")}
    if args.data_root is not None:
        dataset = changes.get("dataset", base.dataset)
        changes["dataset_options"] = {**changes.get("dataset_options", base.dataset_options),
                                      data_root_option(dataset): args.data_root}
    if args.backbone is not None:
        changes["backbone"], changes["backbone_options"] = args.backbone, {}
    if args.backbone_option:
        changes["backbone_options"] = {**changes.get("backbone_options", base.backbone_options),
                                       **_key_values(args.backbone_option, "--backbone-option")}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.latent_dim is not None:
        changes["latent_dim"] = args.latent_dim
    changes.update(_key_values(args.set, "--set"))
    cell_keys = sorted({"geometry", "row", "optimizer", "seed", "out_dir"} & set(changes))
    if cell_keys:
        raise SystemExit(f"--set {', '.join(cell_keys)}: the grid sets these (use --geometries, --optimizers, "
                         f"--seeds, --out)")
    try:
        base = base.replace(**changes)
        return CompareSettings(base=base, out=Path(args.out), geometries=args.geometries,
                               optimizers=args.optimizers, seeds=args.seeds,
                               robustness_samples=args.robustness_samples, figures=not args.no_figures,
                               fmn_steps=args.fmn_steps)
    except (TypeError, ValueError) as exc:
        raise SystemExit(str(exc)) from None


def executor_from_args(args: argparse.Namespace) -> SweepExecutor:
    """The executor a parsed command line asks for."""
    if args.executor == "local":
        return make_executor("local", workers=args.workers)
    parameters = {"timeout_min": args.timeout_min, "slurm_partition": args.slurm_partition,
                  "cpus_per_task": args.cpus_per_task, "gpus_per_node": args.gpus_per_node,
                  "mem_gb": args.mem_gb, **_key_values(args.submitit_param, "--submitit-param")}
    parameters = {k: v for k, v in parameters.items() if v is not None}
    cluster = None if args.submitit_cluster == "auto" else args.submitit_cluster
    folder = Path(args.submitit_folder) if args.submitit_folder else Path(args.out) / "submitit" / "%j"
    try:
        return make_executor("submitit", folder=folder, cluster=cluster, max_in_flight=args.max_in_flight,
                             parameters=parameters)
    except ImportError as exc:
        raise SystemExit(str(exc)) from None


def main(argv: Sequence[str] | None = None, *,
         parser: argparse.ArgumentParser | None = None) -> CompareResult | None:
    """Run the comparison a command line describes; returns its result (:func:`cli` adds the exit status),
    or None after ``--dry-run`` listed the runs.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).
    parser : argparse.ArgumentParser, optional
        A parser made by :func:`build_parser` with options of the caller's added (the benchmark's
        ``--results-dir``); default :func:`build_parser`.
    """
    args = (parser or build_parser()).parse_args(argv)
    return run_args(args)


def run_args(args: argparse.Namespace) -> CompareResult | None:
    """Run the comparison of a parsed command line (:func:`main` after parsing)."""
    settings = settings_from_args(args)
    if args.dry_run:
        return dry_run(settings)
    executor = executor_from_args(args)
    return run_compare(settings, executor=executor, progress=not args.no_progress,
                       log=partial(print, flush=True))


def dry_run(settings: CompareSettings) -> None:
    """Print the runs :func:`run_compare` would start: one line each (name, cell, seed, epochs, directory)."""
    jobs = build_jobs(settings)
    width = max(len(job.name) for job in jobs)
    for job in jobs:
        c = job.config
        print(f"{job.name:<{width}}  geometry={c.geometry} row={c.row} optimizer={c.optimizer} seed={c.seed} "
              f"epochs={c.epochs} dataset={c.dataset} backbone={c.backbone}  -> {c.out_dir}")
    print(f"{len(jobs)} runs under {settings.out} (dry run: nothing trained)")


def cli(argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None,
        on_result: Callable[[argparse.Namespace, CompareResult], None] | None = None) -> int:
    """Command-line entry point (``lpc-geom compare``, ``benchmarks/compare_manifolds.py``); returns the exit
    status.

    0 when every run finished (or ``--dry-run`` listed them), 1 when any failed (they are listed at the
    end), 130 on Ctrl-C (the workers are stopped; the same command resumes).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).
    parser : argparse.ArgumentParser, optional
        As for :func:`main`.
    on_result : callable, optional
        Called with the parsed arguments and the :class:`CompareResult` after a run (not after
        ``--dry-run``), before the exit status is taken: where the benchmark writes its results fragment.
    """
    try:
        args = (parser or build_parser()).parse_args(argv)
        result = run_args(args)
        if result is None:  # --dry-run
            return 0
        if on_result is not None:
            on_result(args, result)
    except KeyboardInterrupt:
        print("\ninterrupted; launch the same command again to go on (finished runs are reused, half-trained "
              "ones resume from their checkpoints)", file=sys.stderr, flush=True)
        return 130
    return exit_status(result.records)
