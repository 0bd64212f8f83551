"""Fisher-geometry and Gromov-Wasserstein figures: wall time against the issue 6 target.

Target (issue 6): the Fisher figures of :func:`lpc_geom.analysis.fisher.fisher_summary` (trace, log-volume,
scalar curvature with its spread and the masked fraction, class-mean Fisher-Rao distances) for 10,000
latents with d = 16 and K = 10 in at most 10 s on the project's 2-core CPU.

The latents are Gaussian clusters around random class means and the classifier is aligned with the means
(``W = scale * means``), so the predictive distributions range from uncertain to confident and the masking
path is exercised. ``d > K - 1`` here, so the rank-deficient (range-of-G) path is the one timed. Each figure
is the median of ``--repeat`` runs after one warm-up run. Also timed: the autograd path on the same linear
head for 1,000 points (the route manifold heads take) and :func:`transport_summary` on the K class means.

Run ``python benchmarks/bench_fisher.py`` (``--json PATH`` writes the figures). :func:`run` returns them
as a dict, for ``benchmarks/bench_analyze.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from _results import add_results_argument, markdown_table, write_fragment

from lpc_geom.analysis.fisher import fisher_pointwise_autograd, fisher_summary
from lpc_geom.analysis.transport import transport_summary

FISHER_TARGET_S = 10.0


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: first-call costs (torch kernels, import-time caches) are not the figure's
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_problem(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Latents (n, d), labels (n,), classifier W (k, d) and bias b (k,)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d))
    labels = rng.integers(0, k, size=n)
    latents = means[labels] + 0.5 * rng.normal(size=(n, d))
    return latents, labels, 0.6 * means, 0.1 * rng.normal(size=k)


def run(n: int = 10_000, d: int = 16, k: int = 10, repeat: int = 3, seed: int = 0) -> dict[str, float]:
    """Time the Fisher summary (closed form), the autograd path and the transport summary."""
    latents, labels, W, b = make_problem(n, d, k, seed)
    summary = fisher_summary(latents, W, b, labels=labels)
    out: dict[str, float] = {f"value_{key}": value for key, value in summary.items()}
    out["fisher_summary_s"] = _median_time(lambda: fisher_summary(latents, W, b, labels=labels), repeat)

    n_auto = min(n, 1000)
    Wt, bt = torch.tensor(W), torch.tensor(b)
    out["fisher_autograd_points"] = float(n_auto)
    out["fisher_autograd_s"] = _median_time(
        lambda: fisher_pointwise_autograd(latents[:n_auto], lambda x: x @ Wt.T + bt), repeat
    )

    means = np.stack([latents[labels == c].mean(axis=0) for c in range(k)])
    out["transport_summary_s"] = _median_time(lambda: transport_summary(means), repeat)
    out.update({f"value_{key}": value for key, value in transport_summary(means).items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=str, default=None, help="write the figures to this file")
    add_results_argument(parser, "bench_fisher")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    figures = run(args.n, args.d, args.k, args.repeat)
    print(f"torch threads: {torch.get_num_threads()}  N = {args.n}, d = {args.d}, K = {args.k}")
    for key, value in figures.items():
        print(f"  {key:34s} {value:.6g}")
    ok = figures["fisher_summary_s"] <= FISHER_TARGET_S
    verdict = "meets" if ok else "MISSES"
    print(f"fisher_summary: {figures['fisher_summary_s']:.3f} s, {verdict} the {FISHER_TARGET_S:g} s target")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "d": args.d, "k": args.k, **figures}, fh, indent=2)
    timings = markdown_table(
        ["computation", "points", "median s"],
        [["`fisher_summary` (closed form)", f"{args.n:,}", f"{figures['fisher_summary_s']:.3f}"],
         ["`fisher_pointwise_autograd` (the manifold heads' path)", f"{int(figures['fisher_autograd_points']):,}",
          f"{figures['fisher_autograd_s']:.3f}"],
         ["`transport_summary` of the class means", f"{args.k}", f"{figures['transport_summary_s']:.3f}"]],
    )
    values = markdown_table(["figure", "value"], [[f"`{key[len('value_'):]}`", f"{value:.4g}"]
                                                  for key, value in figures.items() if key.startswith("value_")])
    text = (
        f"Gaussian latents, N = {args.n:,}, d = {args.d}, K = {args.k}, a linear classifier aligned with the class "
        f"means; medians of {args.repeat} runs after a warm-up, torch on {torch.get_num_threads()} thread(s).\n\n"
        f"{timings}\n\n**fisher_summary: {figures['fisher_summary_s']:.3f} s** (target <= {FISHER_TARGET_S:g} s: "
        f"{'met' if ok else 'MISSED'}).\n\nThe figures computed (a check that the timed work is the real one):\n\n"
        f"{values}\n"
    )
    write_fragment(args.results_dir, "Fisher-metric and Gromov-Wasserstein figures", text,
                   data={"n": args.n, "d": args.d, "k": args.k, **figures}, load_before=load_before)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
