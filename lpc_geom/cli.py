"""Command line: ``lpc-geom {train,demo,analyze,rows}`` (also ``python -m lpc_geom``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lpc_geom.ablation import ROWS
from lpc_geom.config import (
    GEOMETRIES,
    OPTIMIZERS,
    TrainConfig,
    check_keys,
    load_config,
    parse_override,
)
from lpc_geom.train.schedules import GAMMA_SCHEDULES

#: Flags of ``lpc-geom train`` that map onto TrainConfig keys (flag dest -> config key).
TRAIN_FLAGS = {
    "dataset": "dataset", "backbone": "backbone", "row": "row", "latent_dim": "latent_dim",
    "geometry": "geometry", "gamma_schedule": "gamma_schedule", "optimizer": "optimizer", "lr": "lr",
    "epochs": "epochs", "batch_size": "batch_size", "seed": "seed", "out": "out_dir", "device": "device",
    "dtype": "dtype", "checkpoint_every": "checkpoint_every", "final_robustness": "final_robustness_samples",
    "kfac_damping": "kfac_damping", "kfac_damping_late": "kfac_damping_late",
    "kfac_update_freq": "kfac_update_freq", "kfac_factor_freq": "kfac_factor_freq", "kfac_fisher": "kfac_fisher",
    "kfac_start_epoch": "kfac_start_epoch",
}


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML/YAML/JSON config file (keys: TrainConfig fields)")
    group = parser.add_argument_group("overrides (take precedence over the config file)")
    group.add_argument("--dataset", help="mnist1d, digits, blobs, cifar10, cifar100 or npz")
    group.add_argument("--data-root", help="CIFAR directory (cifar10/cifar100) or .npz file (npz)")
    group.add_argument("--backbone", help="mlp, cnn1d, resnet18 or resnet50")
    group.add_argument("--row", help=f"ablation row: {', '.join(ROWS)}")
    group.add_argument("--latent-dim", type=int, help="penultimate width (default: the row's width)")
    group.add_argument("--geometry", choices=GEOMETRIES, help="latent geometry of the head")
    group.add_argument("--gamma-schedule", choices=list(GAMMA_SCHEDULES), help="gamma schedule")
    group.add_argument("--gamma-start", type=float, help="initial gamma (paper: 1e-2)")
    group.add_argument("--gamma-factor", type=float, help="growth factor per step (paper: 1.05/epoch)")
    group.add_argument("--gamma-max", type=float, help="largest gamma (paper: 1e6)")
    group.add_argument("--optimizer", choices=OPTIMIZERS,
                       help="optimiser; auto: adamw, or riemannian-adam for manifold heads; kfac-* add K-FAC")
    group.add_argument("--lr", type=float, help="learning rate")
    group.add_argument("--kfac-damping", type=float, help="K-FAC Tikhonov damping")
    group.add_argument("--kfac-damping-late", type=float,
                       help="K-FAC damping once the learning rate starts halving (default: --kfac-damping)")
    group.add_argument("--kfac-update-freq", type=int, help="K-FAC: steps between eigendecompositions")
    group.add_argument("--kfac-factor-freq", type=int, help="K-FAC: steps between curvature statistics")
    group.add_argument("--kfac-fisher", choices=("mc", "empirical", "exact"), help="K-FAC Fisher type")
    group.add_argument("--kfac-start-epoch", type=int,
                       help="K-FAC preconditions from this epoch on (before it the base optimiser steps alone)")
    group.add_argument("--epochs", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--seed", type=int)
    group.add_argument("--out", help="run directory (config, history, checkpoints, latents)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"))
    group.add_argument("--dtype", choices=("float32", "float64"))
    group.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints")
    group.add_argument("--final-robustness", type=int, metavar="N",
                       help="after training, DeepFool/Lipschitz/certified radii on N test inputs (robustness.json)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any TrainConfig key, value parsed as JSON (e.g. --set gamma_options='{\"every\": 2}')")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Config file (or defaults), then explicit flags, then ``--set`` overrides."""
    config = load_config(args.config) if args.config else TrainConfig()
    changes = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    gamma_options = dict(config.gamma_options)
    for flag, key in (("gamma_start", "start"), ("gamma_factor", "factor"), ("gamma_max", "gamma_max")):
        if getattr(args, flag) is not None:
            gamma_options[key] = getattr(args, flag)
    if gamma_options != config.gamma_options:
        changes["gamma_options"] = gamma_options
    if args.data_root is not None:
        dataset = changes.get("dataset", config.dataset)
        key = "path" if dataset == "npz" else "root"
        changes["dataset_options"] = {**config.dataset_options, key: args.data_root}
    for item in args.set:
        key, value = parse_override(item)
        changes[key] = value
    if args.no_progress:
        changes["progress"] = False
    check_keys(changes, source="command-line overrides")
    return config.replace(**changes)


def _cmd_train(args: argparse.Namespace) -> int:
    from lpc_geom.train import train

    config = config_from_args(args)
    result = train(config, resume=args.resume)
    final = result.final
    print(f"run directory: {result.out_dir}")
    print(json.dumps({k: final[k] for k in ("epoch", "train_acc", "test_acc", "gamma") if k in final}))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from lpc_geom.experiments.runs import analyze_run

    report = analyze_run(Path(args.run_dir), split=args.split)
    print(report.to_markdown())
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    from lpc_geom.experiments.runs import analyze_run, robustness_run, run_table

    robustness_run(Path(args.run_dir), samples=args.samples, seed=args.seed, split=args.split,
                   candidates=args.candidates, max_iter=args.max_iter, refine_steps=args.refine_steps,
                   fmn_steps=args.fmn_steps, lipschitz=not args.no_lipschitz)
    if not (Path(args.run_dir) / f"report_{args.split}.json").is_file():
        analyze_run(Path(args.run_dir), split=args.split)
    print(run_table(Path(args.run_dir)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lpc_geom.experiments.demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    return 0


def _cmd_rows(args: argparse.Namespace) -> int:
    width = max(len(name) for name in ROWS)
    for name, row in ROWS.items():
        print(f"{name:<{width}}  {row.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpc-geom",
        description="Latent point collapse (LPC) and the geometry of classifier latents.",
        epilog="Run 'lpc-geom COMMAND --help' for the options of each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train_parser = commands.add_parser(
        "train", help="train one classifier (any ablation row, geometry, optimiser)",
        description="Train one classifier. The run directory receives config.json, history.json/.csv, "
                    "checkpoint.pt (written atomically) and latents.npz (train/test latents, labels, "
                    "predictions). Unknown config keys or values are errors that list the accepted ones.",
    )
    _add_train_arguments(train_parser)
    train_parser.set_defaults(func=_cmd_train)

    demo = commands.add_parser(
        "demo", help="train LPC and the NoPen baseline on MNIST-1D and compare their latents",
        description="Train LPC and NoPen on MNIST-1D (generated offline), print the collapse table and "
                    "write a figure of both latent spaces.",
    )
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo config's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    analyze = commands.add_parser("analyze", help="collapse report of a finished run's latents",
                                  description="Print lpc_geom.analyze's report for RUN_DIR/latents.npz "
                                              "and write it to RUN_DIR/report_<split>.json.")
    analyze.add_argument("run_dir")
    analyze.add_argument("--split", choices=("train", "test"), default="test")
    analyze.set_defaults(func=_cmd_analyze)

    robustness = commands.add_parser(
        "robustness", help="DeepFool, Lipschitz bounds and certified radii of a finished run",
        description="Measure a run's robustness on test inputs, or with --split train on training inputs "
                    "(DeepFool as in the LPC paper: the model's own prediction as label, top-10 candidates, "
                    "overshoot 0.02, no clipping), write RUN_DIR/robustness.json (robustness_train.json) and "
                    "print it joined with the analyzer's report.")
    robustness.add_argument("run_dir")
    robustness.add_argument("--samples", type=int, default=1000, help="inputs attacked (seeded subsample)")
    robustness.add_argument("--split", choices=("test", "train"), default="test",
                            help="attack test inputs (the paper's figure; robustness.json) or training inputs, "
                                 "whose latents the training collapsed (robustness_train.json)")
    robustness.add_argument("--seed", type=int, default=0)
    robustness.add_argument("--candidates", type=int, default=10, help="DeepFool candidate classes")
    robustness.add_argument("--max-iter", type=int, default=50, help="DeepFool iterations")
    robustness.add_argument("--refine-steps", type=int, default=20,
                            help="bisection halvings that shrink each DeepFool perturbation to the nearest "
                                 "misclassified point on its segment (deepfool_refined_*; 0: none)")
    robustness.add_argument("--fmn-steps", type=int, default=100,
                            help="steps of the Fast Minimum-Norm L2 attack, the shortest adversarial perturbations "
                                 "(fmn_*; from 0 and from DeepFool's point; 0: none)")
    robustness.add_argument("--no-lipschitz", action="store_true", help="skip the Lipschitz bounds")
    robustness.set_defaults(func=_cmd_robustness)

    rows = commands.add_parser("rows", help="list the ablation rows", description="List the ablation rows.")
    rows.set_defaults(func=_cmd_rows)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lpc-geom {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
