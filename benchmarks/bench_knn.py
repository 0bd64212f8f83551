"""k-th neighbour distances: the brute-force path of ``kth_neighbour_distance`` against scipy's cKDTree.

The analyzers' entropy uses ``lpc_geom.analysis.geometry.kth_neighbour_distance``: cKDTree for Euclidean
latents with d <= 16, chunked brute force (Gram identity with rounding bounds, exact re-measurement of
the candidates it cannot rule out, re-centring of tight classes) beyond. This times the brute force on
the entropy's default 5,000-point subsample against cKDTree's exact query on the same points, for
Gaussian latents and for LPC-like latents (10 tight classes far from their mean, where the Gram identity
alone cannot resolve the within-class distances), and checks that the two agree.

The machine is shared: the load average before and after each case is printed next to the timings.

    python benchmarks/bench_knn.py
    python benchmarks/bench_knn.py --n 2000 --dims 32
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _results import add_results_argument, markdown_table, write_fragment
from scipy.spatial import cKDTree

from lpc_geom.analysis.geometry import Geometry, kth_neighbour_distance


def cases(n: int, d: int, rng: np.random.Generator):
    yield "gaussian", rng.normal(size=(n, d))
    y = np.arange(n) % 10
    yield "tight classes", 10.0 * rng.normal(size=(10, d))[y] + 1e-6 * rng.normal(size=(n, d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 256])
    add_results_argument(parser, "bench_knn")
    args = parser.parse_args()
    load_before = os.getloadavg()
    torch.set_num_threads(1)
    rows = []
    rng = np.random.default_rng(0)
    print(f"{'case':<14} {'d':>4} {'brute s':>8} {'cKDTree s':>9} {'ratio':>6} {'max rel diff':>12}  load before/after")
    for d in args.dims:
        for name, z in cases(args.n, d, rng):
            load = os.getloadavg()[0]
            t = time.perf_counter()
            got = kth_neighbour_distance(Geometry("euclidean"), torch.from_numpy(z), args.k).numpy()
            brute = time.perf_counter() - t
            t = time.perf_counter()
            ref = cKDTree(z).query(z, k=args.k + 1)[0][:, args.k]
            tree = time.perf_counter() - t
            diff = float(np.max(np.abs(got / ref - 1.0)))
            print(f"{name:<14} {d:>4} {brute:>8.2f} {tree:>9.2f} {brute / tree:>6.2f} {diff:>12.1e}  "
                  f"{load:.1f}/{os.getloadavg()[0]:.1f}")
            rows.append({"case": name, "d": d, "brute_s": brute, "ckdtree_s": tree, "max_rel_diff": diff,
                         "load_before": load, "load_after": os.getloadavg()[0]})
    table = markdown_table(
        ["latents", "d", "brute force s", "cKDTree s", "brute / cKDTree", "max relative difference"],
        [[r["case"], r["d"], f"{r['brute_s']:.2f}", f"{r['ckdtree_s']:.2f}", f"{r['brute_s'] / r['ckdtree_s']:.2f}",
          f"{r['max_rel_diff']:.1e}"] for r in rows],
    )
    text = (
        f"The distance of every point of {args.n:,} latents to its k-th nearest neighbour, k = {args.k} "
        "(the entropy's default "
        "subsample), by lpc_geom's chunked brute force (used for Euclidean latents with d > 16) and by "
        "scipy's exact cKDTree query, on one thread. \"tight classes\": 10 classes of spread 1e-6 far from "
        "their mean, where the Gram identity alone cannot resolve the distances.\n\n" + table + "\n"
    )
    write_fragment(args.results_dir, "k-th neighbour distances: brute force against cKDTree", text,
                   data={"n": args.n, "k": args.k, "rows": rows}, load_before=load_before)


if __name__ == "__main__":
    main()
