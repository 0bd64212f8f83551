"""Batched DeepFool vs the per-sample reference loop, measured in one run on the same inputs.

For each model (an MLP and a 1-D CNN, both lpc_geom ``LPC`` classifiers) the script trains a quick model,
then times, on the same ``--n`` test inputs,

* the per-sample reference: the LTS4 DeepFool loop (one sample at a time, one backward pass per
  candidate class per iteration), as most published robustness numbers were computed;
* :func:`lpc_geom.analysis.robustness.deepfool` on the whole set at once;

checks that both give the same per-sample perturbation norms, and reports the speed-up. Timings are
repeated ``--repeats`` times, alternating the two methods so both see the same machine load; the table
gives the median and the range, and the load average is recorded (on a shared machine the spread is
the noise). Data: MNIST-1D from :func:`lpc_geom.data.load_dataset` (generated offline).

Targets (issue 7): at least 15x on the MLP and 3x on the 1-D CNN, on 1,000 MNIST-1D test inputs.

Run ``python benchmarks/bench_robustness.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _results import add_results_argument, markdown_table, write_fragment
from torch import nn

from lpc_geom.analysis.robustness import deepfool, lipschitz_lower_bound, lipschitz_upper_bound
from lpc_geom.models import build_model

# The per-sample reference loop lives with the tests that check the batched attack against it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from references import reference_deepfool

TARGETS = {"mlp": 15.0, "cnn1d": 3.0}


def load_data(n_test: int, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    """MNIST-1D train/test tensors and a description of them."""
    from lpc_geom.data import load_dataset

    ds = load_dataset("mnist1d", num_samples=max(5000, 5 * n_test), seed=seed)
    return ({"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test[:n_test],
             "y_test": ds.y_test[:n_test]}, f"MNIST-1D via lpc_geom.data ({ds.num_train} train)")


def train(model: nn.Module, data: dict[str, torch.Tensor], epochs: int, seed: int) -> float:
    """A few epochs of AdamW with cross-entropy; returns the test accuracy."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    x, y = data["x_train"], data["y_train"]
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], 128):
            idx = perm[i:i + 128]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]).logits, y[idx]).backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        return float((model(data["x_test"]).logits.argmax(1) == data["y_test"]).float().mean())


def bench_model(name: str, data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(name, "LPC", tuple(data["x_test"].shape[1:]), 10)
    t0 = time.perf_counter()
    acc = train(model, data, args.epochs, args.seed)
    train_s = time.perf_counter() - t0
    x = data["x_test"]
    opts = {"candidates": args.candidates, "overshoot": args.overshoot, "max_iter": args.max_iter}

    per_times, batch_times, ref, res = [], [], None, None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ref = [reference_deepfool(model, x[i], **opts)[:2] for i in range(x.shape[0])]
        ref = [(float(r.norm()), iterations) for r, iterations in ref]
        per_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = deepfool(model, x, batch_size=args.batch_size, return_perturbations=False, **opts)
        batch_times.append(time.perf_counter() - t0)

    # In float64 both computations agree to rounding (~1e-12), which shows the float32 differences are
    # rounding too (the reference subtracts two separately computed gradients, g_k - g_0).
    m64, x64 = copy.deepcopy(model).double(), x[:args.parity64].double()
    res64 = deepfool(m64, x64, return_perturbations=False, **opts)
    ref64 = torch.tensor([reference_deepfool(m64, x64[i], **opts)[0].norm().item() for i in range(x64.shape[0])],
                         dtype=torch.float64)
    rel_diff64 = ((res64.norms - ref64).abs() / ref64.clamp_min(1e-300)).max() if len(ref64) else math.nan

    ref_norms = torch.tensor([r[0] for r in ref], dtype=torch.float64)
    # Which float32 computation is closer to the float64 one (on the parity subset)?
    k = x64.shape[0]
    err_batched = ((res.norms[:k].double() - res64.norms).abs() / res64.norms).max() if k else math.nan
    err_reference = ((ref_norms[:k] - res64.norms).abs() / res64.norms).max() if k else math.nan
    ref_iters = torch.tensor([r[1] for r in ref])
    diffs = (res.norms.double() - ref_norms).abs() / ref_norms.clamp_min(1e-30)
    rel_diff = diffs.max()
    # float32 holds x0 + r only to ~6e-8 ||x0||, i.e. to eps * ||x0|| / ||r|| relative to r: tiny
    # perturbations cannot agree to 1e-5 between any two float32 implementations.
    big = res.relative_norms.double() >= 0.01
    rel_diff_big = diffs[big].max() if bool(big.any()) else math.nan
    t0 = time.perf_counter()
    upper = lipschitz_upper_bound(model, tuple(x.shape[1:])).value
    upper_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lower = lipschitz_lower_bound(model, x).value
    lower_s = time.perf_counter() - t0
    per_med, batch_med = statistics.median(per_times), statistics.median(batch_times)
    return {
        "model": name, "n": int(x.shape[0]), "test_accuracy": acc, "train_s": train_s,
        "per_sample_s": per_times, "batched_s": batch_times,
        "per_sample_median_s": per_med, "batched_median_s": batch_med,
        "speedup_median": per_med / batch_med,
        "speedup_range": [min(per_times) / max(batch_times), max(per_times) / min(batch_times)],
        "target": TARGETS[name], "meets_target": per_med / batch_med >= TARGETS[name],
        "max_rel_norm_diff": float(rel_diff),
        "max_rel_norm_diff_where_relative_norm_ge_0.01": float(rel_diff_big),
        "samples_relative_norm_below_0.01": int((~big).sum()),
        "samples_rel_diff_above_1e-5": int((((res.norms.double() - ref_norms).abs() / ref_norms) > 1e-5).sum()),
        "max_rel_norm_diff_float64": float(rel_diff64), "parity64_samples": int(x64.shape[0]),
        "float32_max_rel_error_vs_float64": {"batched": float(err_batched), "reference": float(err_reference)},
        "iteration_mismatches": int((res.iterations != ref_iters).sum()),
        "success_rate": float(res.success.double().mean()),
        "mean_relative_norm": float(res.relative_norms.double().mean()),
        "mean_iterations": float(res.iterations.double().mean()),
        "lipschitz_upper": upper, "lipschitz_lower": lower,
        "lipschitz_upper_s": upper_s, "lipschitz_lower_s": lower_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="test inputs attacked")
    parser.add_argument("--models", default="mlp,cnn1d", help="comma-separated: mlp, cnn1d")
    parser.add_argument("--epochs", type=int, default=8, help="quick training epochs per model")
    parser.add_argument("--repeats", type=int, default=3, help="timings per method (alternated)")
    parser.add_argument("--batch-size", type=int, default=1000, help="batch size of the batched DeepFool")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--overshoot", type=float, default=0.02)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--parity64", type=int, default=100,
                        help="inputs on which both methods are also compared in float64")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    add_results_argument(parser, "bench_robustness")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data, source = load_data(args.n, args.seed)
    print(f"data: {source}; {args.n} test inputs; torch {torch.__version__}, {args.threads} thread(s); "
          f"load average before: {os.getloadavg()[0]:.2f}")
    load_before = os.getloadavg()
    rows = []
    for name in args.models.split(","):
        rows.append(bench_model(name.strip(), data, args))
    load_after = os.getloadavg()

    header = (f"{'model':<7}{'acc':>6}{'per-sample s':>14}{'batched s':>11}{'speed-up':>10}{'range':>14}"
              f"{'target':>8}{'max rel diff':>14}{'iter !=':>8}{'success':>9}{'mean ||r||/||x||':>18}")
    print(header)
    print("-" * len(header))
    for r in rows:
        lo, hi = r["speedup_range"]
        print(f"{r['model']:<7}{r['test_accuracy']:>6.3f}{r['per_sample_median_s']:>14.2f}"
              f"{r['batched_median_s']:>11.3f}{r['speedup_median']:>9.1f}x{f'{lo:.1f}-{hi:.1f}x':>14}"
              f"{r['target']:>7.0f}x{r['max_rel_norm_diff']:>14.1e}{r['iteration_mismatches']:>8d}"
              f"{r['success_rate']:>9.3f}{r['mean_relative_norm']:>18.4f}")
    for r in rows:
        print(f"{r['model']}: norms differ by more than 1e-5 (relative) on {r['samples_rel_diff_above_1e-5']} "
              f"of {r['n']} samples in float32; max difference where ||r||/||x|| >= 0.01: "
              f"{r['max_rel_norm_diff_where_relative_norm_ge_0.01']:.1e} ({r['samples_relative_norm_below_0.01']} "
              f"samples below); max difference in float64 on {r['parity64_samples']} samples: "
              f"{r['max_rel_norm_diff_float64']:.1e}; float32 error vs float64 there: batched "
              f"{r['float32_max_rel_error_vs_float64']['batched']:.1e}, reference "
              f"{r['float32_max_rel_error_vs_float64']['reference']:.1e}")
        print(f"{r['model']}: Lipschitz upper {r['lipschitz_upper']:.4g} ({r['lipschitz_upper_s']:.2f} s), "
              f"empirical lower {r['lipschitz_lower']:.4g} ({r['lipschitz_lower_s']:.2f} s)")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
          f"{os.cpu_count()} CPUs; speed-up range = slowest/fastest pairing over {args.repeats} repeats")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "data": source, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "torch": torch.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
            "results": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    write_fragment(args.results_dir, "Batched DeepFool against the per-sample loop", _markdown(rows, source, args),
                   data={"data": source, "results": rows}, load_before=load_before)
    return 0 if all(r["meets_target"] for r in rows) else 1


def _markdown(rows: list[dict], source: str, args: argparse.Namespace) -> str:
    table = markdown_table(
        ["model", "test acc", "per-sample loop s", "batched s", "speed-up (median)", "range", "target",
         "max rel. diff (float64)", "mean ‖r‖/‖x‖", "Lipschitz lower / upper"],
        [[r["model"], f"{r['test_accuracy']:.3f}", f"{r['per_sample_median_s']:.2f}", f"{r['batched_median_s']:.3f}",
          f"{r['speedup_median']:.1f}x", f"{r['speedup_range'][0]:.1f}-{r['speedup_range'][1]:.1f}x",
          f">= {r['target']:.0f}x ({'met' if r['meets_target'] else 'MISSED'})",
          f"{r['max_rel_norm_diff_float64']:.1e}",
          f"{r['mean_relative_norm']:.4f}", f"{r['lipschitz_lower']:.3g} / {r['lipschitz_upper']:.3g}"]
         for r in rows],
    )
    return (
        f"DeepFool on {args.n} test inputs of {source}, each model an lpc_geom LPC classifier trained "
        f"{args.epochs} epochs: the LTS4 per-sample loop (one sample at a time) against "
        f"`lpc_geom.analysis.robustness.deepfool` on the whole batch, {args.repeats} alternated repetitions "
        f"on {args.threads} thread(s). Both give the same perturbations (relative difference in float64 on "
        f"{args.parity64} inputs). The Lipschitz bounds are of the logits: an empirical lower bound and the "
        "certified upper bound (product of layer norms).\n\n" + table + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
