"""Wall time of ``lpc_geom.analyze`` against the issue 3 targets, and against a per-sample loop.

Targets (issue 3), on the project's 2-core CPU: a full report on 50,000 x 64 latents with 10 classes in at
most 10 s, and on 50,000 x 512 with 100 classes in at most 30 s. "Full report" is ``analyze`` with its
defaults and a linear classifier ``(W, b)`` (logits of standard deviation about 1): every figure except
the opt-in per-unit GMM figures (``gmm=True``; timed separately with ``--gmm``), so it includes the issue 6
groups: ``fisher`` (pointwise Fisher figures on the default seeded subsample of 2,000 latents, Fisher-Rao
distances on all of them) and ``transport`` (``gw_etf``, ``gw_hypercube``). The latents are float32
Gaussian classes (means of scale 2, unit noise).

Also timed:

* The ``fisher`` and ``transport`` groups alone: ``analyze(..., groups=["collapse", name])`` minus
  ``analyze(..., groups=["collapse"])`` (validation, the shared statistics and the collapse figures), i.e.
  their share of the full report.
  Their modules import geoopt and POT on first use (about 2 s once per process): imported before the
  timings, like the package itself, and the import time is recorded (``fisher_transport_import_s``).
* ``CollapseAccumulator``: the same data streamed in batches of 4,096, then ``report()``.
* A straightforward per-sample loop implementation of the same figures (written here, numpy; one Python
  iteration per sample for class means, within-class scatter, norms, separation ratio and NC4; a direct
  d x d pseudo-inverse for NC1; one query per point for the k-NN entropy on the same 5,000-point
  subsample; per-unit moments for the hypercube figures). Running it on 50,000 samples would take minutes,
  so its per-sample parts run on ``--loop-samples`` samples and its entropy on ``--loop-queries`` query
  points, and those times are **extrapolated linearly** to the full size (the output says so). Its figures
  on the subsample are compared with ``analyze`` on the same subsample as a cross-check.
* With ``benchmarks/bench_fisher.py`` present (issue 6), its ``run()`` (Fisher and transport figures) is
  included unless ``--no-fisher``.

The machine is shared: the load average before and after each case is recorded next to the timings.

``--ratios`` (issue 18) measures instead, in one process on one thread (``--threads``), with ``--repeat``
interleaved repetitions and their medians, the cost of ``analyze`` as a ratio to one float32 Gram product
``z^T z`` of the same 50,000 x 512 latents (100 classes): the collapse group (``groups=["collapse"]``:
validation, the shared class statistics and NC1-NC4, sigma_W, norm CV) and the full default report, in
wall time and in process CPU time (less sensitive to other processes on a shared machine). It also checks
the accuracy on collapsed float64 latents (class means of scale 1, within-class noise 1e-8, so
sigma_W / sigma_T ~ 1e-8) against a float64 two-pass reference written here with numpy. Targets: collapse
group <= 2x, full report <= 6x, relative error <= 1e-6.

    python benchmarks/bench_analyze.py                     # both cases, table + results/bench_analyze.json
    python benchmarks/bench_analyze.py --quick --out /tmp/b.json
    python benchmarks/bench_analyze.py --ratios            # its fragment in docs/results/bench_analyze_ratios
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import RESULTS_DIR, add_results_argument, markdown_table, write_fragment

CASES = {"d64_K10": (50_000, 64, 10, 10.0), "d512_K100": (50_000, 512, 100, 30.0)}
QUICK_CASES = {"d64_K10": (5_000, 64, 10, 10.0), "d512_K100": (5_000, 512, 100, 30.0)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="results/bench_analyze.json", help="JSON output path (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch / BLAS threads (default: 2; 1 with --ratios)")
    p.add_argument("--ratios", action="store_true", help="issue 18: cost ratios to one Gram product, one run")
    add_results_argument(p, "bench_analyze")  # with --ratios: docs/results/bench_analyze_ratios by default
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES), help="cases to run")
    p.add_argument("--quick", action="store_true", help="N = 5,000 instead of 50,000 (smoke test)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of analyze per case; the best is kept")
    p.add_argument("--loop-samples", type=int, default=2000, help="samples for the per-sample loop (default 2000)")
    p.add_argument("--loop-queries", type=int, default=500, help="entropy query points for the loop (default 500)")
    p.add_argument("--gmm", action="store_true", help="also time the opt-in per-unit GMM figures")
    p.add_argument("--no-fisher", action="store_true", help="skip benchmarks/bench_fisher.py (issue 6 figures)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.ratios and args.results_dir == RESULTS_DIR / "bench_analyze":
        args.results_dir = RESULTS_DIR / "bench_analyze_ratios"
    return args


def make_data(n, d, k, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = (2.0 * rng.normal(size=(k, d))[y] + rng.normal(size=(n, d))).astype(np.float32)
    return z, y


# -- the straightforward implementation ----------------------------------------------------------------
def loop_figures(z, y, W, b, *, n_queries, k=20, max_entropy_samples=5000, seed=0):
    """Per-sample loop implementation of the default figures. Returns (figures, timings by part):
    ``linear`` (cost proportional to N), ``fixed`` (paid once) and ``entropy_queries``."""
    import numpy as np
    from scipy.special import digamma, gammaln

    z = z.astype(np.float64)
    n, d = z.shape
    classes = np.unique(y)
    K = len(classes)
    t = {}

    t0 = time.perf_counter()
    sums = np.zeros((K, d))
    counts = np.zeros(K)
    for i in range(n):
        c = np.searchsorted(classes, y[i])
        sums[c] += z[i]
        counts[c] += 1
    mu = sums / counts[:, None]
    zbar = z.mean(0)
    Sw = np.zeros((d, d))
    St = np.zeros((d, d))
    norms = np.empty(n)
    for i in range(n):
        v = z[i] - mu[np.searchsorted(classes, y[i])]
        Sw += np.outer(v, v)
        w = z[i] - zbar
        St += np.outer(w, w)
        norms[i] = np.linalg.norm(z[i])
    Sw /= n
    St /= n
    ratios, disagree = [], 0
    for i in range(n):
        c = np.searchsorted(classes, y[i])
        dist = np.array([np.linalg.norm(z[i] - mu[q]) for q in range(K)])
        other = np.min(np.delete(dist, c))
        if dist[c] > 0:
            ratios.append(other / dist[c])
        disagree += int(np.argmin(dist) != np.argmax(W @ z[i] + b))
    signs = np.zeros((K, d))
    for i in range(n):
        signs[np.searchsorted(classes, y[i])] += np.sign(z[i])
    skews, kurts = [], []
    for j in range(d):  # per-unit moments, each over all samples: also linear in N
        col = z[:, j] - z[:, j].mean()
        m2 = np.mean(col**2)
        skews.append(np.mean(col**3) / m2**1.5)
        kurts.append(np.mean(col**4) / m2**2)
    t["linear"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    M = mu - mu.mean(0)
    Sb = M.T @ M / K
    nc1 = float(np.trace(Sw @ np.linalg.pinv(Sb)) / K)  # the direct d x d pseudo-inverse
    cn = np.linalg.norm(M, axis=1)
    cos = [M[a] @ M[c] / (cn[a] * cn[c]) for a in range(K) for c in range(a + 1, K)]
    Gm = (M / cn[:, None]) @ (M / cn[:, None]).T
    E = np.eye(K) - 1.0 / K
    codes = np.sign(mu)
    ham = min(int((codes[a] != codes[c]).sum()) for a in range(K) for c in range(a + 1, K))
    Wc = W[classes]
    t["fixed"] = time.perf_counter() - t0
    figures = {
        "sigma_w": float(np.trace(Sw) / d),
        "sigma_w_rel": float(np.trace(Sw) / np.trace(St)),
        "nc1": nc1,
        "nc2_equinorm": float(cn.std() / cn.mean()),
        "nc2_equiangular": float(np.std(cos)),
        "etf_distance": float(np.linalg.norm(Gm / np.linalg.norm(Gm) - E / np.linalg.norm(E))),
        "nc3": float(np.linalg.norm(Wc / np.linalg.norm(Wc) - M / np.linalg.norm(M)) ** 2),
        "nc4": disagree / n,
        "norm_cv": float(norms.std() / norms.mean()),
        "separation_ratio": float(np.mean(ratios)),
        "hypercube_min_hamming": ham,
    }

    # Entropy: one brute-force query per point of the (seeded) subsample.
    rng = np.random.default_rng(seed)
    sub = z if n <= max_entropy_samples else z[np.sort(rng.choice(n, max_entropy_samples, replace=False))]
    m = len(sub)
    q = min(n_queries, m)
    t0 = time.perf_counter()
    rho = np.empty(q)
    for i in range(q):
        dist = np.linalg.norm(sub - sub[i], axis=1)
        dist[i] = np.inf
        rho[i] = np.partition(dist, k - 1)[k - 1]
    t["entropy_queries"] = time.perf_counter() - t0
    t["entropy_extrapolation"] = m / q
    log_v = 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d + 1))
    figures["entropy_partial"] = float(digamma(m) - digamma(k) + log_v + d * np.mean(np.log(rho))) / d
    return figures, t


# -- main ----------------------------------------------------------------------------------------------
def time_case(name, n, d, k, target, args):
    import numpy as np
    import torch

    from lpc_geom import CollapseAccumulator, analyze

    # The fisher and transport groups import geoopt and POT on first use (about 2 s, once per process);
    # like the package's own import, that is paid before the timings, and reported separately.
    t0 = time.perf_counter()
    for module in ("lpc_geom.analysis.fisher", "lpc_geom.analysis.transport"):
        importlib.import_module(module)
    import_s = time.perf_counter() - t0

    z, y = make_data(n, d, k, args.seed)
    rng = np.random.default_rng(args.seed + 2)
    # Logits of standard deviation about 1: predictions neither uniform nor saturated, so that no point is
    # masked from the Fisher log-volume and curvature and every Fisher figure is computed and timed.
    W, b = 0.5 * rng.normal(size=(k, d)) / math.sqrt(d), rng.normal(size=k)
    load_before = os.getloadavg()
    analyze_s = math.inf
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        report = analyze(z, y, classifier=(W, b))
        analyze_s = min(analyze_s, time.perf_counter() - t0)
    group_s = {}
    # analyze needs at least one group: the collapse group (validation, shared statistics) is the base
    for name, group in (("base", ["collapse"]), ("fisher", ["collapse", "fisher"]),
                        ("transport", ["collapse", "transport"])):
        t0 = time.perf_counter()
        analyze(z, y, classifier=(W, b), groups=group)
        group_s[name] = time.perf_counter() - t0
    fisher_s = group_s["fisher"] - group_s["base"]
    transport_s = group_s["transport"] - group_s["base"]
    t0 = time.perf_counter()
    acc = CollapseAccumulator()
    for s in range(0, n, 4096):
        acc.update(torch.from_numpy(z[s : s + 4096]), y[s : s + 4096])
    acc.report(classifier=(W, b))
    stream_s = time.perf_counter() - t0
    gmm_s = None
    if args.gmm:
        t0 = time.perf_counter()
        analyze(z, y, groups=["hypercube"], gmm=True)
        gmm_s = time.perf_counter() - t0

    m = min(args.loop_samples, n)
    idx = np.sort(np.random.default_rng(args.seed + 1).choice(n, m, replace=False))
    loop_vals, loop_t = loop_figures(z[idx], y[idx], W, b, n_queries=args.loop_queries, seed=args.seed)
    # the linear parts scale with N; the entropy with the points it queries; the rest is paid once
    queries = min(args.loop_queries, m, 5000)
    loop_est = loop_t["linear"] * n / m + loop_t["fixed"] + loop_t["entropy_queries"] * min(n, 5000) / queries
    extrapolated = m < n or queries < min(n, 5000)
    sub_report = analyze(z[idx], y[idx], classifier=(W, b)).to_dict()
    check = {
        key: abs(loop_vals[key] - sub_report[key]) / max(abs(sub_report[key]), 1e-300)
        for key in loop_vals
        if key in sub_report
    }
    load_after = os.getloadavg()
    return {
        "case": name,
        "N": n,
        "d": d,
        "K": k,
        "target_s": target,
        "analyze_s": analyze_s,
        "within_target": analyze_s <= target,
        "fisher_transport_import_s": import_s,
        "fisher_group_s": fisher_s,
        "transport_group_s": transport_s,
        "stream_s": stream_s,
        "gmm_hypercube_s": gmm_s,
        "loop_s": loop_est,
        "loop_extrapolated": extrapolated,
        "loop_measured_on_samples": m,
        "loop_entropy_queries": queries,
        "loop_parts_s": loop_t,
        "speedup_vs_loop": loop_est / analyze_s,
        "loop_vs_analyze_max_rel_diff_on_subsample": max(check.values()),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "figures": report.to_dict(),
    }


# -- issue 18: cost ratios ---------------------------------------------------------------------------
RATIO_TARGETS = {"collapse": 2.0, "full": 6.0}
ACCURACY_TARGET = 1e-6


def two_pass_reference(z, y):
    """sigma_W, sigma_W / sigma_T and NC1 by the textbook two-pass float64 formulas (numpy)."""
    import numpy as np

    classes = np.unique(y)
    K, (n, d) = len(classes), z.shape
    mu = np.stack([z[y == c].mean(0) for c in classes])
    r = z - mu[np.searchsorted(classes, y)]
    within = float(np.einsum("ij,ij->", r, r)) / n
    zt = z - z.mean(0)
    total = float(np.einsum("ij,ij->", zt, zt)) / n
    M = mu - mu.mean(0)
    _, sv, vt = np.linalg.svd(M, full_matrices=False)
    keep = sv > max(K, d) * np.finfo(np.float64).eps * max(sv[0], np.linalg.norm(mu, axis=1).max())
    proj = r @ vt[keep].T
    nc1 = float(((proj**2).sum(0) / n / sv[keep] ** 2).sum())
    return {"sigma_w": within / d, "sigma_w_rel": within / total, "nc1": nc1}


def cost_ratios(args) -> dict:
    import statistics

    import numpy as np
    import torch

    from lpc_geom import analyze

    for module in ("lpc_geom.analysis.fisher", "lpc_geom.analysis.transport"):
        importlib.import_module(module)
    n, d, k = (5_000, 512, 100) if args.quick else (50_000, 512, 100)
    z, y = make_data(n, d, k, args.seed)
    rng = np.random.default_rng(args.seed + 2)
    W, b = 0.5 * rng.normal(size=(k, d)) / math.sqrt(d), rng.normal(size=k)
    zt = torch.from_numpy(z)
    jobs = {
        "gram": lambda: zt.T @ zt,
        "collapse": lambda: analyze(z, y, groups=["collapse"]),
        "full": lambda: analyze(z, y, classifier=(W, b)),
    }
    for job in jobs.values():  # warm-up: allocator, first-call imports
        job()
    load_before = os.getloadavg()
    wall = {name: [] for name in jobs}
    cpu = {name: [] for name in jobs}
    for _ in range(max(1, args.repeat)):
        for name, job in jobs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            job()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    load_after = os.getloadavg()
    med_wall = {name: statistics.median(v) for name, v in wall.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}

    # Accuracy on collapsed float64 latents: class means of scale 1, within-class noise 1e-8.
    acc_rng = np.random.default_rng(args.seed + 3)
    ya = acc_rng.integers(0, k, n)
    za = acc_rng.normal(size=(k, d))[ya] + 1e-8 * acc_rng.normal(size=(n, d))
    ref = two_pass_reference(za, ya)
    got = analyze(za, ya, groups=["collapse"]).to_dict()
    rel_err = {key: abs(got[key] - val) / abs(val) for key, val in ref.items()}
    return {
        "N": n,
        "d": d,
        "K": k,
        "threads": torch.get_num_threads(),
        "repeat": max(1, args.repeat),
        "wall_s": wall,
        "cpu_s": cpu,
        "median_wall_s": med_wall,
        "median_cpu_s": med_cpu,
        "ratio_wall": {name: med_wall[name] / med_wall["gram"] for name in RATIO_TARGETS},
        "ratio_cpu": {name: med_cpu[name] / med_cpu["gram"] for name in RATIO_TARGETS},
        "targets": RATIO_TARGETS,
        "collapsed_sigma_w_over_sigma_t": math.sqrt(ref["sigma_w_rel"]),
        "collapsed_rel_err": rel_err,
        "accuracy_target": ACCURACY_TARGET,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cpu_count": os.cpu_count(),
    }


def report_ratios(res: dict, results_dir: Path) -> None:
    lines = [
        f"analyze cost on {res['N']:,} x {res['d']} float32 latents, {res['K']} classes; torch/BLAS on "
        f"{res['threads']} thread(s); medians of {res['repeat']} interleaved repetitions",
        f"load average {res['loadavg_before'][0]:.2f} before, {res['loadavg_after'][0]:.2f} after "
        f"({res['cpu_count']} CPUs)",
        "",
        f"{'job':<28} {'wall s':>8} {'cpu s':>8} {'x gram (wall)':>14} {'x gram (cpu)':>13} {'target':>7}",
    ]
    labels = {"gram": "float32 Gram z^T z", "collapse": "collapse group", "full": "full default report"}
    for name, label in labels.items():
        rw = res["median_wall_s"][name] / res["median_wall_s"]["gram"]
        rc = res["median_cpu_s"][name] / res["median_cpu_s"]["gram"]
        target = f"<= {RATIO_TARGETS[name]:.0f}" if name in RATIO_TARGETS else ""
        lines.append(
            f"{label:<28} {res['median_wall_s'][name]:>8.3f} {res['median_cpu_s'][name]:>8.3f} {rw:>14.2f} "
            f"{rc:>13.2f} {target:>7}"
        )
    errs = ", ".join(f"{k} {v:.1e}" for k, v in res["collapsed_rel_err"].items())
    worst = max(res["collapsed_rel_err"].values())
    lines += [
        "",
        f"collapsed float64 latents (sigma_W/sigma_T = {res['collapsed_sigma_w_over_sigma_t']:.1e}): relative error "
        f"against the two-pass float64 reference {errs} (target <= {ACCURACY_TARGET:.0e}: "
        f"{'met' if worst <= ACCURACY_TARGET else 'MISSED'})",
    ]
    for name, target in RATIO_TARGETS.items():
        rw, rc = res["ratio_wall"][name], res["ratio_cpu"][name]
        lines.append(
            f"{labels[name]}: x{rw:.2f} wall, x{rc:.2f} CPU (target <= {target:.0f}: "
            f"{'met' if rw <= target else 'MISSED'} in wall time)"
        )
    text = "\n".join(lines)
    print(text)
    table = markdown_table(
        ["job", "wall s", "CPU s", "x Gram (wall)", "x Gram (CPU)", "target"],
        [[labels[name], f"{res['median_wall_s'][name]:.3f}", f"{res['median_cpu_s'][name]:.3f}",
          f"{res['median_wall_s'][name] / res['median_wall_s']['gram']:.2f}",
          f"{res['median_cpu_s'][name] / res['median_cpu_s']['gram']:.2f}",
          f"<= {RATIO_TARGETS[name]:.0f}" if name in RATIO_TARGETS else ""] for name in labels],
    )
    markdown = (
        f"The cost of `lpc_geom.analyze` on {res['N']:,} x {res['d']} float32 latents with {res['K']} classes, as "
        f"a ratio to one float32 Gram product z^T z of the same latents, in one process on {res['threads']} "
        f"thread(s); medians of {res['repeat']} interleaved repetitions. CPU time is the process's, less "
        "sensitive to other processes than wall time.\n\n" + table + "\n\n"
        + "\n".join(f"- {line}" for line in lines[-1 - len(RATIO_TARGETS):]) + "\n"
    )
    write_fragment(results_dir, "Cost of analyze relative to a Gram product", markdown, data=res,
                   load_before=tuple(res["loadavg_before"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.ratios else 2
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if args.ratios:
        report_ratios(cost_ratios(args), args.results_dir)
        return 0
    cases = QUICK_CASES if args.quick else CASES
    results = []
    for name in args.cases:
        n, d, k, target = cases[name]
        print(f"[{name}] N={n} d={d} K={k} ...", flush=True)
        results.append(time_case(name, n, d, k, target, args))

    fisher = None
    fisher_path = Path(__file__).with_name("bench_fisher.py")
    if not args.no_fisher and fisher_path.exists():
        spec = importlib.util.spec_from_file_location("bench_fisher", fisher_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print("[fisher] benchmarks/bench_fisher.py run() ...", flush=True)
        fisher = mod.run()

    header = f"{'case':<10} {'N':>7} {'d':>4} {'K':>4} {'analyze s':>10} {'target s':>9} {'fisher s':>9} "
    header += f"{'gw s':>6} {'stream s':>9} {'loop s':>10} {'speedup':>8}"
    print("\n" + header)
    print("-" * len(header))
    for r in results:
        mark = "*" if r["loop_extrapolated"] else " "
        print(
            f"{r['case']:<10} {r['N']:>7} {r['d']:>4} {r['K']:>4} {r['analyze_s']:>10.2f} {r['target_s']:>9.0f} "
            f"{r['fisher_group_s']:>9.2f} {r['transport_group_s']:>6.2f} "
            f"{r['stream_s']:>9.2f} {r['loop_s']:>9.1f}{mark} {r['speedup_vs_loop']:>7.0f}x"
        )
    if any(r["loop_extrapolated"] for r in results):
        print(
            "* loop time extrapolated linearly: per-sample parts measured on "
            f"{results[0]['loop_measured_on_samples']} samples, entropy on {results[0]['loop_entropy_queries']} "
            "query points, scaled to the full N / 5,000-point entropy subsample"
        )
    for r in results:
        print(
            f"  {r['case']}: loop vs analyze on the loop's subsample, max relative difference "
            f"{r['loop_vs_analyze_max_rel_diff_on_subsample']:.1e}; load average before/after "
            f"{r['loadavg_before'][0]:.1f}/{r['loadavg_after'][0]:.1f} on {os.cpu_count()} CPUs"
            + (f"; gmm hypercube figures {r['gmm_hypercube_s']:.1f} s" if r["gmm_hypercube_s"] is not None else "")
        )
    if fisher is not None:
        print("  fisher/transport (bench_fisher.run): " + ", ".join(
            f"{k}={v:.3g}" for k, v in fisher.items() if k.endswith("_s")
        ))
    out = {
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "quick": args.quick,
        },
        "cases": results,
        "fisher": fisher,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float))
    print(f"\nwrote {path}")
    write_fragment(args.results_dir, "Wall time of analyze", _markdown(results, fisher, args), data=out,
                   load_before=load_before)
    return 0


def _markdown(results: list[dict], fisher: dict | None, args) -> str:
    table = markdown_table(
        ["latents", "K", "analyze s", "target s", "Fisher group s", "GW group s", "streaming s",
         "per-sample loop s", "loop / analyze"],
        [[f"{r['N']:,} x {r['d']}", r["K"], f"{r['analyze_s']:.2f}", f"{r['target_s']:.0f}",
          f"{r['fisher_group_s']:.2f}", f"{r['transport_group_s']:.2f}", f"{r['stream_s']:.2f}",
          f"{r['loop_s']:.1f}" + (" (extrapolated)" if r["loop_extrapolated"] else ""),
          f"{r['speedup_vs_loop']:.0f}x"] for r in results],
    )
    text = (
        f"The full default report of `lpc_geom.analyze` (with a linear classifier, so the Fisher and "
        f"Gromov-Wasserstein groups are included; not the opt-in GMM figures) on Gaussian float32 latents, "
        f"torch on {args.threads} thread(s), best of {max(1, args.repeat)}; the streaming "
        "`CollapseAccumulator` on the same data in batches of 4,096; and a straightforward per-sample numpy "
        "loop of the same figures written in the benchmark, run on a subsample and scaled linearly to N "
        "(marked extrapolated).\n\n" + table + "\n"
    )
    if fisher is not None:
        text += "\n`benchmarks/bench_fisher.py`'s figures in the same run: " + ", ".join(
            f"{k} {v:.3g}" for k, v in fisher.items() if k.endswith("_s")) + ".\n"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
