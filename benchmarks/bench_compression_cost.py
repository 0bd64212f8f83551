"""Cost of the LPC compression term: epoch time of LPC against the same model trained on plain CE.

LPC and LinPen share the architecture (backbone -> linear penultimate -> classifier); LinPen has no
penalty, so the ratio of their training-epoch times is the cost of gamma * ||z||^2. The two are run
alternately in one process (several rounds, swapping which goes first) and the medians of their epoch
times are compared, so that load from other processes affects both alike.

    python benchmarks/bench_compression_cost.py [--rounds 5] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _results import add_results_argument, markdown_table, write_fragment

from lpc_geom.data import load_dataset
from lpc_geom.experiments.demo import demo_config
from lpc_geom.train import train
from lpc_geom.train.checkpoint import write_json

TARGET_RATIO = 1.05


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round and row (default 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_compression_cost.json")
    add_results_argument(parser, "bench_compression_cost")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    base = demo_config().replace(epochs=args.epochs, progress=False, checkpoint_every=10_000)
    data = load_dataset(base.dataset, **base.dataset_options)
    times: dict[str, list[float]] = {"LinPen": [], "LPC": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            order = list(times) if round_index % 2 == 0 else list(times)[::-1]  # neither always runs second
            for row in order:
                result = train(base.replace(row=row, seed=round_index, out_dir=str(Path(tmp) / row)), dataset=data,
                               overwrite=True)  # each round replaces the last round's run
                # the first epoch of a run warms caches up: keep the rest
                times[row].extend(r["epoch_seconds"] for r in result.history[1:])
    medians = {row: float(np.median(values)) for row, values in times.items()}
    ratio = medians["LPC"] / medians["LinPen"]
    print(f"median training-epoch time over {len(times['LPC'])} epochs each ({args.rounds} alternating rounds)")
    print(f"  CE only (LinPen): {medians['LinPen']:.4f} s")
    print(f"  CE + gamma||z||^2 (LPC): {medians['LPC']:.4f} s")
    print(f"  ratio LPC / CE: {ratio:.4f}  (target <= {TARGET_RATIO})")
    figures = {"median_seconds": medians, "ratio": ratio, "epochs": times}
    write_json(figures, args.out)
    print(f"written: {args.out}")
    write_fragment(args.results_dir, "Cost of the compression term", _markdown(medians, ratio, times, args),
                   figures={"epoch_times.png": _figure(times)}, data=figures, load_before=load_before)
    return 0


def _markdown(medians: dict[str, float], ratio: float, times: dict[str, list[float]], args) -> str:
    table = markdown_table(
        ["model", "loss", "median epoch s", "epochs timed"],
        [["LinPen", "cross-entropy", f"{medians['LinPen']:.4f}", len(times["LinPen"])],
         ["LPC", "cross-entropy + gamma ||z||^2", f"{medians['LPC']:.4f}", len(times["LPC"])]],
    )
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    return (
        "LPC against LinPen (the same backbone, linear penultimate layer and classifier, no penalty), trained "
        f"in {args.rounds} alternating rounds of {args.epochs} epochs (the first epoch of each run left out), "
        f"on {args.threads} thread(s), on the demo's MNIST-1D recipe. The ratio of median epoch times is the "
        "cost of the penalty.\n\n"
        f"{table}\n\n"
        f"**Ratio LPC / LinPen: {ratio:.3f}** (target <= {TARGET_RATIO}: {verdict}).\n\n"
        "![training-epoch times of LinPen and LPC, every timed epoch](epoch_times.png)\n"
    )


def _figure(times: dict[str, list[float]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    for i, (row, values) in enumerate(times.items()):
        ax.scatter(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values, s=14, label=row)
        ax.hlines(np.median(values), i - 0.3, i + 0.3, color="black")
    ax.set_xticks(range(len(times)), list(times))
    ax.set_ylabel("seconds per training epoch")
    ax.set_title("Epoch times (line: median)")
    return fig


if __name__ == "__main__":
    sys.exit(main())
