"""K-FAC against AdamW on MNIST-1D (MLP backbone, LPC head): epochs, seconds and step time to a target.

Part 1, convergence. For every seed the AdamW baseline and each K-FAC variant train with the project's
trainer (:class:`lpc_geom.train.Trainer`, the loop ``lpc-geom train`` runs) for the same number of
epochs. The target is the AdamW run's final test accuracy; for every run the benchmark reports the first
epoch whose test accuracy reaches it and the training seconds spent until then (the trainer's
``epoch_seconds``, evaluation excluded), with the run's median step time (interval between consecutive
``optimizer.step()`` returns). Those runs are sequential, so on a shared machine their step times drift
with the load.

Part 2, step time (issue 18). The variants step in turn on the same random MNIST-1D-shaped batches, one
step of each per round, so that load changes hit all of them alike; torch runs on one intra-op thread
(``--threads``) and the figures are medians over the rounds, as ratios to the AdamW step of the same rounds
(mean ratios, which include the periodic refreshes, beside them). Each step is split into ``stats``
(``update_statistics``: the extra Fisher backward and the factor products of layers with more batch rows
than factor rows), ``precond`` (``step`` on steps that reuse the damped inverses, including the factor
products it forms straight into the moving averages), ``refresh`` (the extra cost of the steps that recompute them,
amortised per step), ``opt`` (the optimiser update) and ``other`` (forward, loss, backward). Variants:

* ``kfac-adam``: MC statistics every step, inverses every ``update_freq`` steps (the trainer's default);
* ``kfac-adam stats/N``: statistics and inverses every ``update_freq`` steps (``KFAC(factor_freq=N)``);
* ``... dense``: the same with ``low_rank=False`` (the dense ``G^-1 dW A^-1`` products on every layer);
* ``kfac-adam sub``: MC statistics from half of each batch (``KFAC(stats_examples=N/2)``).

Beside the wall-clock ratios the same ratios of the process's CPU time are given: on a shared machine a
step that is preempted counts its waiting in wall time, not in CPU time.

Part 3, the main job's model. AdamW and K-FAC-Adam as the Euclidean LPC cell of
``benchmarks/compare_manifolds.py`` trains them (:func:`lpc_geom.experiments.compare.grid.default_config`:
1-D ResNet-18 of width 8 with batch norm on MNIST-1D, batch 128, K-FAC statistics every 10 steps), built
by the project's trainer and stepping in turn over every batch of ``--resnet-epochs`` epochs, so that
their mean step ratio is the ratio of their seconds per epoch.

The targets of issue 18, at the training batch size: ``kfac-adam`` at most 3.0x AdamW's median step,
``kfac-adam stats/N`` at most 2.0x; K-FAC-Adam's seconds per epoch on the ResNet at most 2.0x AdamW's;
and (part 1) fewer epochs to the target than AdamW in every seed.
Run ``python benchmarks/bench_optimizers.py`` (3 seeds, 20 epochs) or ``--quick`` for a smoke run;
``--skip-training`` runs parts 2 and 3 only; ``--json PATH`` writes every figure, and the documentation's
results fragment (tables, figure, data) goes to ``--results-dir``. The load average before and after is
printed and saved with the figures: on a shared machine only ratios measured in one run mean anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _results import add_results_argument, markdown_table, write_fragment

from lpc_geom.config import TrainConfig
from lpc_geom.data import load_dataset
from lpc_geom.losses import Objective
from lpc_geom.models import build_model
from lpc_geom.optim import build_optimizer
from lpc_geom.optim.kfac import KFAC
from lpc_geom.train.trainer import Trainer

#: issue 18: median step time over AdamW's, MC statistics every step / statistics and inverses every N steps
STEP_RATIO_TARGETS = {"kfac-adam": 3.0, "kfac-adam stats/N": 2.0}
#: seconds per epoch of K-FAC-Adam over AdamW's on the main job's ResNet
RESNET_EPOCH_RATIO_TARGET = 2.0
PARTS = ("stats", "precond", "refresh", "opt", "other")
_TIMING_HEADER = (f"{'batch':>5} {'variant':24} {'step':>7} {'ratio':>6} {'mean r':>6} {'cpu r':>6} {'cpu m r':>7} | "
                  + " ".join(f"{p:>7}" for p in PARTS))


def _timing_line(batch: int, name: str, res: dict[str, float]) -> str:
    parts = (" ".join(f"{res[p]:>7.1f}" for p in PARTS) if name != "adamw"
             else " ".join(f"{'-':>7}" for _ in PARTS[:3]) + f" {res['opt']:>7.1f} {res['other']:>7.1f}")
    return (f"{batch:>5} {name:24} {res['median_step_ms']:>7.1f} {res['ratio']:>6.2f} {res['mean_ratio']:>6.2f} "
            f"{res['cpu_ratio']:>6.2f} {res['mean_cpu_ratio']:>7.2f} | {parts}")


# --------------------------------------------------------------------------- part 1: convergence
def _time_optimizer_steps(trainer: Trainer) -> list[float]:
    """Wrap ``trainer.optimizer.step`` so that it records when each call returns."""
    ends: list[float] = []
    original = trainer.optimizer.step

    def timed(*args, **kwargs):
        result = original(*args, **kwargs)
        ends.append(time.perf_counter())
        return result

    trainer.optimizer.step = timed
    return ends


def train_run(name: str, optimizer: str, lr: float, seed: int, args: argparse.Namespace, data) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            dataset="mnist1d",
            backbone="mlp",
            row="LPC",
            gamma_schedule="exponential",  # the paper's recipe, every training sample trained on
            optimizer=optimizer,
            lr=lr,
            kfac_fisher=args.fisher,
            kfac_damping=args.damping,
            kfac_update_freq=args.update_freq,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=seed,
            device="cpu",
            out_dir=str(Path(tmp) / name),
            checkpoint_every=args.epochs,
            progress=False,
        )
        trainer = Trainer(config, dataset=data)
        if args.stats_examples is not None and trainer.preconditioner is not None:
            if args.fisher != "mc":
                raise SystemExit("--stats-examples subsamples the MC Fisher: it needs --fisher mc")
            trainer.preconditioner.stats_examples = args.stats_examples
        ends = _time_optimizer_steps(trainer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = trainer.fit().history
    per_epoch = len(ends) // args.epochs
    # The first interval of every epoch spans the previous epoch's evaluation: dropped.
    gaps = [b - a for i, (a, b) in enumerate(itertools.pairwise(ends)) if (i + 1) % per_epoch]
    return {
        "name": name,
        "seed": seed,
        "test_acc": [row["test_acc"] for row in history],
        "epoch_seconds": [row["epoch_seconds"] for row in history],
        "median_step_ms": 1e3 * statistics.median(gaps),
    }


def reach(run: dict[str, Any], target: float) -> tuple[int | None, float | None]:
    """First epoch (counted from 1) whose test accuracy is >= target, and training seconds until then."""
    for e, acc in enumerate(run["test_acc"]):
        if acc >= target - 1e-12:
            return e + 1, sum(run["epoch_seconds"][: e + 1])
    return None, None


# --------------------------------------------------------------------------- part 2: step time
def interleaved_step_times(
    batch_size: int, variants: list[tuple[str, str, int | None, dict]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Median step time and its parts for each variant ``(name, optimizer, factor_freq or None, KFAC kwargs)``."""
    gen = torch.Generator().manual_seed(batch_size)
    x, y = torch.randn(batch_size, 40, generator=gen), torch.randint(0, 10, (batch_size,), generator=gen)
    objective = Objective("LPC")
    setups = {}
    for name, optimizer, factor_freq, extra in variants:
        torch.manual_seed(0)
        model = build_model("mlp", "LPC", (40,), 10)
        opt = build_optimizer(model, optimizer, lr=1e-3)
        pc = None
        if factor_freq is not None:
            kwargs = {k: (batch_size // 2 if v == "half" else v) for k, v in extra.items()}
            pc = KFAC(model, args.fisher, args.damping, args.update_freq, lr=1e-3, factor_freq=factor_freq, **kwargs)
        setups[name] = (model, opt, pc)
    record: dict[str, dict[str, list[float]]] = {n: {p: [] for p in ("total", "cpu", *PARTS)} for n in setups}
    refresh_flags: dict[str, list[bool]] = {n: [] for n in setups}
    for _ in range(args.timing_steps):
        for name, (model, opt, pc) in setups.items():
            _timed_step(model, opt, pc, x, y, objective, 1e-2, record[name], refresh_flags[name])
    return _summarise(record, refresh_flags, warm=2 * args.update_freq)


def _timed_step(model, opt, pc, x, y, objective, gamma, r: dict[str, list[float]], refresh: list[bool]) -> None:
    """One training step (the trainer's order), its parts appended to ``r`` (seconds; ``cpu``: process CPU time)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = model(x)
    t1 = time.perf_counter()
    if pc is not None:
        pc.update_statistics(out.logits, y)
    t2 = time.perf_counter()
    objective(out, y, gamma=gamma, epoch=0)[0].backward()
    t3 = time.perf_counter()
    if pc is not None:
        refresh.append(pc.steps % pc.update_freq == 0)
        pc.step()
    t4 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t5 = time.perf_counter()
    r["cpu"].append(time.process_time() - c0)
    r["total"].append(t5 - t0)
    r["stats"].append(t2 - t1)
    r["precond"].append(t4 - t3)
    r["opt"].append(t5 - t4)
    r["other"].append((t1 - t0) + (t3 - t2))


def _summarise(
    record: dict[str, dict[str, list[float]]], refresh_flags: dict[str, list[bool]], warm: int,
    amortised: tuple[str, ...] = (),
) -> dict[str, dict[str, float]]:
    """Medians (ms) of every part after ``warm`` rounds, refreshes (and the statistics of the variants in
    ``amortised`` and those named ``.../N``) amortised, ratios to ``"adamw"``."""
    out: dict[str, dict[str, float]] = {}
    for name, r in record.items():
        flags = refresh_flags[name][warm:]
        res = {"median_step_ms": 1e3 * statistics.median(r["total"][warm:]),
               "median_cpu_ms": 1e3 * statistics.median(r["cpu"][warm:]),
               "mean_step_ms": 1e3 * statistics.fmean(r["total"][warm:]),
               "mean_cpu_ms": 1e3 * statistics.fmean(r["cpu"][warm:])}
        for part in ("stats", "opt", "other"):
            res[part] = 1e3 * statistics.median(r[part][warm:])
        precond = r["precond"][warm:]
        plain = [t for t, f in zip(precond, flags, strict=False) if not f] or precond
        res["precond"] = 1e3 * statistics.median(plain)
        refresh = [t for t, f in zip(precond, flags, strict=False) if f]
        extra = statistics.fmean(refresh) - statistics.median(plain) if refresh else 0.0
        res["refresh"] = 1e3 * extra * len(refresh) / len(precond)
        if name.endswith("/N") or name in amortised:  # statistics on one step in N: amortise them too
            res["stats"] = 1e3 * statistics.fmean(r["stats"][warm:])
        out[name] = res
    base = out["adamw"]
    for res in out.values():
        res["ratio"] = res["median_step_ms"] / base["median_step_ms"]
        res["cpu_ratio"] = res["median_cpu_ms"] / base["median_cpu_ms"]
        res["mean_ratio"] = res["mean_step_ms"] / base["mean_step_ms"]
        res["mean_cpu_ratio"] = res["mean_cpu_ms"] / base["mean_cpu_ms"]
    return out


# --------------------------------------------------------------------------- part 3: the main job's ResNet
def resnet_step_times(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """AdamW and K-FAC-Adam on the main job's model and data, stepping in turn over whole epochs.

    Both trainers are built from :func:`lpc_geom.experiments.compare.grid.default_config` (the Euclidean
    LPC cell of ``benchmarks/compare_manifolds.py``: 1-D ResNet-18 of width 8 with batch norm, MNIST-1D,
    batch 128, K-FAC statistics every 10 steps); every batch of ``--resnet-epochs`` epochs of the data
    order is stepped by one and then the other, so ``mean_step_ms`` ratios are ratios of seconds per epoch.
    """
    from lpc_geom.experiments.compare.grid import default_config

    base = default_config()
    data = load_dataset(base.dataset, **base.dataset_options)
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, optimizer in (("adamw", "auto"), ("kfac-adam", "kfac-adam")):
            trainers[name] = Trainer(base.replace(optimizer=optimizer, out_dir=str(Path(tmp) / name), seed=0),
                                     dataset=data)
    record = {n: {p: [] for p in ("total", "cpu", *PARTS)} for n in trainers}
    refresh_flags: dict[str, list[bool]] = {n: [] for n in trainers}
    gamma = base.gamma_options["start"]
    generator = torch.Generator().manual_seed(0)
    for tr in trainers.values():
        tr.model.train()
    for _ in range(args.resnet_epochs):
        for batch in torch.randperm(len(data.y_train), generator=generator).split(base.batch_size):
            x, y = data.x_train[batch], data.y_train[batch]
            for name, tr in trainers.items():
                _timed_step(tr.model, tr.optimizer, tr.preconditioner, x, y, tr.objective, gamma, record[name],
                            refresh_flags[name])
    steps = len(record["adamw"]["total"]) // args.resnet_epochs
    out = _summarise(record, refresh_flags, warm=min(steps, 2 * base.kfac_factor_freq), amortised=("kfac-adam",))
    for res in out.values():
        res["steps_per_epoch"], res["batch_size"] = steps, base.batch_size
    return out


# --------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW and K-FAC-Adam learning rate")
    parser.add_argument("--kfac-sgd-lr", type=float, default=0.1, help="K-FAC-SGD learning rate (0: skip it)")
    parser.add_argument("--fisher", choices=("mc", "empirical", "exact"), default="mc")
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--update-freq", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--timing-batches", type=int, nargs="*", default=[128, 256, 512], help="batch sizes of part 2")
    parser.add_argument("--timing-steps", type=int, default=60, help="steps per variant and batch size in part 2")
    parser.add_argument("--skip-training", action="store_true", help="part 2 only")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 epochs, 2,000 samples")
    parser.add_argument("--json", type=Path, help="write all figures to this file")
    add_results_argument(parser, "bench_optimizers")
    parser.add_argument(
        "--stats-examples", type=int, default=None, help="part 1: K-FAC MC statistics from this many examples"
    )
    parser.add_argument("--resnet-epochs", type=int, default=2,
                        help="part 3: epochs of the main job's ResNet stepped by each optimiser (0: skip it)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    start_load = os.getloadavg()
    if args.quick:
        args.seeds, args.epochs, args.num_samples, args.timing_steps = [0], 3, 2_000, 30
        args.timing_batches = [args.batch_size]
    if args.batch_size not in args.timing_batches:
        args.timing_batches = [args.batch_size, *args.timing_batches]
    torch.set_num_threads(args.threads)
    print(
        f"MNIST-1D, MLP + LPC head, batch {args.batch_size}, {args.threads} thread(s); K-FAC fisher={args.fisher}, "
        f"damping={args.damping}, inverses every {args.update_freq} steps"
    )
    ok = True

    variants = [("adamw", "adamw", args.lr), ("kfac-adam", "kfac-adam", args.lr)]
    if args.kfac_sgd_lr > 0:
        variants.append(("kfac-sgd", "kfac-sgd", args.kfac_sgd_lr))
    rows: list[dict[str, Any]] = []
    if not args.skip_training:
        data = load_dataset("mnist1d", num_samples=args.num_samples)
        print(
            f"\nPart 1: {len(data.y_train)} train / {len(data.y_test)} test samples, {args.epochs} epochs, "
            f"seeds {args.seeds}; target = AdamW's final test accuracy"
        )
        for seed in args.seeds:
            runs = [train_run(name, opt, lr, seed, args, data) for name, opt, lr in variants]
            target = runs[0]["test_acc"][-1]
            for run in runs:
                epochs, seconds = reach(run, target)
                run.update(target=target, epochs_to_target=epochs, seconds_to_target=seconds)
                run["step_ratio_in_training"] = run["median_step_ms"] / runs[0]["median_step_ms"]
                rows.append(run)
                print(
                    f"  seed {seed} {run['name']:10s} final {run['test_acc'][-1]:.4f}  target {target:.4f} reached "
                    f"at epoch {epochs or 'never'} after {seconds or float('nan'):.1f} s  "
                    f"(median step {run['median_step_ms']:.1f} ms, x{run['step_ratio_in_training']:.2f})",
                    flush=True,
                )
        for name, _, _ in variants[1:]:
            mine = [r for r in rows if r["name"] == name]
            base = {r["seed"]: r for r in rows if r["name"] == "adamw"}
            fewer = [
                r["epochs_to_target"] is not None and r["epochs_to_target"] < base[r["seed"]]["epochs_to_target"]
                for r in mine
            ]
            ok &= all(fewer)
            print(
                f"  {name}: fewer epochs to the target than AdamW in {sum(fewer)}/{len(mine)} seeds "
                f"({'met' if all(fewer) else 'MISSED'})"
            )

    N = args.update_freq
    timing_variants = [
        ("adamw", "adamw", None, {}),
        ("kfac-adam", "adamw", 1, {}),
        ("kfac-adam stats/N", "adamw", N, {}),
        ("kfac-adam dense", "adamw", 1, {"low_rank": False}),
        ("kfac-adam dense stats/N", "adamw", N, {"low_rank": False}),
        ("kfac-adam sub", "adamw", 1, {"stats_examples": "half"}),
        ("kfac-sgd", "sgd", 1, {}),
    ]
    load_before = os.getloadavg()
    print(
        f"\nPart 2: step time, variants interleaved, {args.timing_steps} steps each, torch on {args.threads} "
        f"thread(s) (ms, medians; N = {N}); load average {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f} on {os.cpu_count()} CPUs"
    )
    print(_TIMING_HEADER + "\n" + "-" * len(_TIMING_HEADER))
    timing: dict[int, dict[str, dict[str, float]]] = {}
    for n in args.timing_batches:
        timing[n] = interleaved_step_times(n, timing_variants, args)
        for name, res in timing[n].items():
            print(_timing_line(n, name, res), flush=True)
    at_batch = timing[args.batch_size]
    verdicts = []
    for name, target in STEP_RATIO_TARGETS.items():
        res = at_batch[name]
        met = res["ratio"] <= target
        ok &= met
        verdicts.append(
            f"{name}: median step x{res['ratio']:.2f} AdamW's (mean x{res['mean_ratio']:.2f}; CPU time: median "
            f"x{res['cpu_ratio']:.2f}, mean x{res['mean_cpu_ratio']:.2f}) at batch {args.batch_size}, "
            f"target <= {target}: {'met' if met else 'MISSED'}"
        )
        print("  " + verdicts[-1])
    load_mid = os.getloadavg()
    print(f"  load average before/after part 2: {load_before[0]:.2f} / {load_mid[0]:.2f} (1 min)")

    resnet: dict[str, dict[str, float]] = {}
    if args.resnet_epochs > 0:
        print(f"\nPart 3: the main job's model (benchmarks/compare_manifolds.py, Euclidean LPC cell), AdamW and "
              f"K-FAC-Adam stepping in turn over {args.resnet_epochs} epoch(s); load average {load_mid[0]:.2f}")
        print(_TIMING_HEADER + "\n" + "-" * len(_TIMING_HEADER))
        resnet = resnet_step_times(args)
        for name, res in resnet.items():
            print(_timing_line(res["batch_size"], name, res), flush=True)
        res = resnet["kfac-adam"]
        met = res["mean_ratio"] <= RESNET_EPOCH_RATIO_TARGET
        ok &= met
        verdicts.append(
            f"ResNet kfac-adam: seconds per epoch x{res['mean_ratio']:.2f} AdamW's (CPU time x"
            f"{res['mean_cpu_ratio']:.2f}; median step x{res['ratio']:.2f}), target <= "
            f"{RESNET_EPOCH_RATIO_TARGET}: {'met' if met else 'MISSED'}"
        )
        print("  " + verdicts[-1])
    load_after = os.getloadavg()

    payload = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "threads": args.threads,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "training": rows,
        "step_time": timing,
        "resnet_step_time": resnet,
        "verdicts": verdicts,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
    figures = {"test_accuracy.png": _figure(rows)} if rows else {}
    write_fragment(args.results_dir, "K-FAC against AdamW", _markdown(payload, args), figures=figures, data=payload,
                   load_before=start_load)
    return 0 if ok or not args.check else 1


def _figure(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    names = sorted({r["name"] for r in rows}, key=[r["name"] for r in rows].index)
    for colour, name in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], names, strict=False):
        for i, r in enumerate(r for r in rows if r["name"] == name):
            epochs = range(1, len(r["test_acc"]) + 1)
            ax.plot(epochs, [100 * a for a in r["test_acc"]], color=colour, alpha=0.8,
                    label=name if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy per epoch, every seed")
    ax.legend(loc="lower right")
    return fig


def _markdown(payload: dict[str, Any], args: argparse.Namespace) -> str:
    def table(rows):
        return markdown_table(
            ["batch", "variant", "median step ms", "x AdamW", "mean x AdamW", "CPU x AdamW", "CPU mean x AdamW",
             *(f"{p} ms" for p in PARTS)],
            [[n, name, f"{res['median_step_ms']:.1f}", f"{res['ratio']:.2f}", f"{res['mean_ratio']:.2f}",
              f"{res['cpu_ratio']:.2f}", f"{res['mean_cpu_ratio']:.2f}",
              *(f"{res.get(p, float('nan')):.1f}" for p in PARTS)] for n, name, res in rows],
        )

    step = table([(n, name, res) for n, t in payload["step_time"].items() for name, res in t.items()])
    lines = [
        f"MNIST-1D, MLP + LPC head, K-FAC fisher={args.fisher}, damping {args.damping}, inverses every "
        f"{args.update_freq} steps, torch on {args.threads} thread(s).",
        "",
        f"**Step time.** The variants step in turn on the same batches ({args.timing_steps} steps each); medians, "
        "as ratios to the AdamW step of the same rounds (mean ratios include the periodic refreshes); `CPU`: the "
        "same ratios of the process's CPU time, which a shared machine's load distorts less than wall time. "
        "`stats`: the extra Fisher backward and the factor products of layers with more batch rows than factor "
        "rows; `precond`: preconditioning on steps that reuse the inverses, with the other factor products (formed "
        "at the step, straight into the moving averages); `refresh`: the inverse refreshes, amortised per step; "
        "`opt`: the optimiser update; `other`: forward, loss, backward.",
        "",
        step,
        "",
    ]
    if payload["resnet_step_time"]:
        resnet = payload["resnet_step_time"]
        lines += [
            f"**The main job's model.** AdamW and K-FAC-Adam on the Euclidean LPC cell of "
            f"`benchmarks/compare_manifolds.py` (1-D ResNet-18 of width 8, batch norm, MNIST-1D, batch "
            f"{resnet['adamw']['batch_size']}, K-FAC statistics every 10 steps, damping 1e-2), stepping in turn over "
            f"{args.resnet_epochs} epoch(s) of {resnet['adamw']['steps_per_epoch']} steps; the mean ratios are "
            "ratios of seconds per epoch.",
            "",
            table([(res["batch_size"], name, res) for name, res in resnet.items()]),
            "",
        ]
    lines += [*(f"- {v}" for v in payload["verdicts"])]
    if payload["training"]:
        training = markdown_table(
            ["seed", "optimiser", "final test acc %", "target %", "epochs to target", "seconds to target"],
            [[r["seed"], r["name"], f"{100 * r['test_acc'][-1]:.2f}", f"{100 * r['target']:.2f}",
              r["epochs_to_target"] or "never",
              f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] is not None else "-"]
             for r in payload["training"]],
        )
        lines += [
            "",
            f"**Convergence.** Each optimiser trains with the project's trainer for {args.epochs} epochs per seed; "
            "the target is the AdamW run's final test accuracy.",
            "",
            training,
            "",
            "![test accuracy per epoch, every optimiser and seed](test_accuracy.png)",
        ]
    else:
        lines += ["", "(Convergence part skipped: `--skip-training`.)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
