"""Train an LPC classifier with K-FAC (natural gradient) in front of AdamW, next to plain AdamW.

K-FAC is a *preconditioner*: it only rewrites ``.grad`` with an approximate natural gradient (the inverse
of a Kronecker-factored Fisher applied to each Linear layer's gradient), and any optimiser steps after it
(AdamW here; Riemannian Adam for manifold heads). One step reads

    out = model(x)
    precond.update_statistics(out.logits, y)   # Fisher statistics from the logits; touches no .grad
    loss = cross_entropy(out.logits, y) + gamma * out.energy.mean()
    loss.backward()
    precond.step()                             # .grad <- preconditioned gradient
    optimizer.step()

The LPC compression term enters ``.grad`` but not the Fisher (which is the classifier's, of the
cross-entropy alone). The trainer does the same with ``lpc-geom train --optimizer kfac-adam`` (or
``kfac-riemannian`` for manifold heads; ``TrainConfig(optimizer="kfac-adam")``).

    python examples/kfac_training.py                  # 20 epochs each, ~20 s
    python examples/kfac_training.py --fisher empirical --epochs 5
"""

import argparse
import time

import torch
import torch.nn.functional as F

from lpc_geom.data import load_dataset
from lpc_geom.models import build_model
from lpc_geom.optim import KFAC, build_optimizer


def train(data, args, use_kfac: bool) -> list[float]:
    torch.manual_seed(0)  # same initialisation for both optimisers
    model = build_model("mlp", "LPC", data.input_shape, data.num_classes, hidden=[args.width, args.width])
    optimizer = build_optimizer(model, "adamw", lr=args.lr, weight_decay=5e-4)
    precond = KFAC(model, fisher=args.fisher, damping=1e-3, update_freq=10, lr=args.lr) if use_kfac else None
    gamma, accuracies = 1e-2, []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(epoch))
        for batch in order.split(128):
            x, y = data.x_train[batch], data.y_train[batch]
            out = model(x)
            if precond is not None:
                precond.update_statistics(out.logits, y)
            loss = F.cross_entropy(out.logits, y) + gamma * out.energy.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if precond is not None:
                precond.step()
            optimizer.step()
        gamma = min(gamma * 1.2, 30.0)
        model.eval()
        with torch.no_grad():
            accuracies.append((model(data.x_test).logits.argmax(1) == data.y_test).float().mean().item())
        print(f"{'K-FAC + AdamW' if use_kfac else 'AdamW':>13}  epoch {epoch:3d}  last batch loss {loss.item():.4f}"
              f"  test acc {accuracies[-1]:.3f}")
    print(f"{'K-FAC + AdamW' if use_kfac else 'AdamW':>13}: {time.perf_counter() - start:.1f} s\n")
    return accuracies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=4000, help="MNIST-1D samples (train + test)")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the 2-layer MLP backbone")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fisher", choices=["mc", "empirical", "exact"], default="mc",
                        help="true Fisher by sampling (mc), empirical Fisher, or exact true Fisher")
    args = parser.parse_args(argv)

    data = load_dataset("mnist1d", num_samples=args.samples)
    results = {name: train(data, args, use_kfac) for name, use_kfac in (("adamw", False), ("kfac", True))}
    for name, accuracies in results.items():
        print(f"{name:>6}: final test accuracy {accuracies[-1]:.3f}, best {max(accuracies):.3f}")
    return results


if __name__ == "__main__":
    main()
