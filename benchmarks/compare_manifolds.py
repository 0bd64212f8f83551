"""Latent point collapse across geometries and optimisers, in one command.

Trains the grid geometry {euclidean-LPC, euclidean-NoPen, sphere, poincare, stiefel} x optimiser
{default (AdamW / Riemannian Adam), kfac (K-FAC + AdamW / Riemannian Adam)} x seeds {0, 1} on MNIST-1D
(by default), analyses every run's latents in the geometry of its head, measures its robustness
(DeepFool, Lipschitz bounds, certified radii on 500 test inputs), and writes

    OUT/table.md                   the markdown table printed at the end (mean ± std over seeds)
    OUT/runs.csv, runs.json        one row per run (failed runs with their error)
    OUT/cells.csv, cells.json      one row per (geometry, optimiser) cell
    OUT/analysis.json              GW distances between the geometries' class-centre configurations,
                                   separation ratio vs robustness correlation
    OUT/figures/*.png              latents in 2-D, per-unit histograms, collapse over epochs,
                                   separation vs robustness, GW matrix
    OUT/runs/<geometry>__<optimiser>__seed<k>/   each run

with OUT = results/compare_manifolds unless --out says otherwise. Launching the same command again reuses
the finished runs, resumes half-trained ones from their checkpoints and retries failed ones. Exit status
0 when every run finished, 1 when any failed (listed at the end). The logic lives in
lpc_geom.experiments.compare; an installed lpc_geom runs the same job as ``lpc-geom compare``.

    python benchmarks/compare_manifolds.py                     # the default grid (~6 min on 2 idle cores)
    python benchmarks/compare_manifolds.py --help              # every option
    python benchmarks/compare_manifolds.py --executor submitit --slurm-partition gpu --gpus-per-node 1 ...
"""

from __future__ import annotations

import sys

from lpc_geom.experiments.compare import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
