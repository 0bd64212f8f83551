"""Latent point collapse across geometries and optimisers, in one command.

Trains the grid geometry {euclidean-LPC, euclidean-NoPen, sphere, poincare, stiefel} x optimiser
{default (AdamW / Riemannian Adam), kfac (K-FAC + AdamW / Riemannian Adam)} x seeds {0, 1} on MNIST-1D
(by default), analyses every run's latents in the geometry of its head, measures its robustness
(DeepFool, the Fast Minimum-Norm attack, Lipschitz bounds, certified radii on 500 test inputs), and writes

    OUT/table.md                   the markdown table printed at the end (mean ± std over seeds)
    OUT/runs.csv, runs.json        one row per run (failed runs with their error)
    OUT/cells.csv, cells.json      one row per (geometry, optimiser) cell
    OUT/analysis.json              GW distances between the geometries' class-centre configurations,
                                   separation ratio vs robustness correlations
    OUT/figures/*.png              latents in 2-D, per-unit histograms, collapse over epochs,
                                   separation vs robustness, GW matrix
    OUT/runs/<geometry>__<optimiser>__seed<k>/   each run

with OUT = results/compare_manifolds unless --out says otherwise, and the documentation's results
fragment (the table, LPC vs NoPen, the correlations and the two main figures) in --results-dir
(default docs/results/compare_manifolds). Launching the same command again reuses the finished runs,
resumes half-trained ones from their checkpoints and retries failed ones. Exit status 0 when every run
finished, 1 when any failed (listed at the end). The logic lives in lpc_geom.experiments.compare; an
installed lpc_geom runs the same job, without the results fragment, as ``lpc-geom compare``.

    python benchmarks/compare_manifolds.py                     # the default grid
    python benchmarks/compare_manifolds.py --help              # every option
    python benchmarks/compare_manifolds.py --executor submitit --slurm-partition gpu --gpus-per-node 1 ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lpc_geom.experiments.compare import CompareResult, build_parser, cli, fragment_markdown

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results sits beside this script
from _results import add_results_argument, write_fragment

NAME = "compare_manifolds"
TITLE = "Geometries and optimisers: latent point collapse, separation and robustness"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (``lpc-geom compare``'s options) and write its results fragment."""
    load_before = os.getloadavg()
    parser = build_parser()
    parser.prog = "compare_manifolds.py"
    add_results_argument(parser, NAME)

    def write(args: argparse.Namespace, result: CompareResult) -> None:
        markdown, figures = fragment_markdown(result)
        write_fragment(args.results_dir, TITLE, markdown, figures=figures, load_before=load_before,
                       data={"seconds": result.seconds, "cells": result.cells, "gw": result.gw,
                             "separation_vs_robustness_by_attack": result.correlations_by_attack})

    return cli(argv, parser=parser, on_result=write)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
