"""Cost of the LPC compression term: epoch time of LPC against the same model trained on plain CE.

LPC and LinPen share the architecture (backbone -> linear penultimate -> classifier); LinPen has no
penalty, so the ratio of their training-epoch times is the cost of gamma * ||z||^2. The two are run
alternately in one process (several rounds, swapping which goes first) and the medians of their epoch
times are compared, so that load from other processes affects both alike.

    python benchmarks/bench_compression_cost.py [--rounds 5] [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lpc_geom.data import load_dataset
from lpc_geom.experiments.demo import demo_config
from lpc_geom.train import train
from lpc_geom.train.checkpoint import write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round and row (default 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_compression_cost.json")
    args = parser.parse_args(argv)
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
    print(f"  ratio LPC / CE: {ratio:.4f}  (target <= 1.05)")
    write_json({"median_seconds": medians, "ratio": ratio, "epochs": times}, args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
