"""Analyse latents from any model with lpc_geom.analyze.

Here the "model" is a synthetic one: class points on the vertices of a hypercube plus noise, rotated
(which hides the binary encoding from per-unit tests) and not rotated. Replace `latents` and `labels`
with your own penultimate activations and true labels (numpy arrays or torch tensors).

    python examples/analyze_your_latents.py [--samples 2000] [--noise 0.01]
"""

import argparse

import numpy as np
from scipy.stats import special_ortho_group

import lpc_geom


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=16)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    codes = rng.choice([-1.0, 1.0], size=(args.classes, args.dim))  # one hypercube vertex per class
    labels = rng.integers(0, args.classes, args.samples)
    latents = codes[labels] + args.noise * rng.standard_normal((args.samples, args.dim))
    rotated = latents @ special_ortho_group.rvs(args.dim, random_state=1)

    for name, z in (("on hypercube vertices", latents), ("rotated hypercube", rotated)):
        report = lpc_geom.analyze(z, labels)
        print(f"\n## {name}\n")
        print(report.to_markdown())
    return report


if __name__ == "__main__":
    main()
