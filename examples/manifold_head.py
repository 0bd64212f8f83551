"""Plug a geoopt manifold into the LPC head and train it for a few epochs on MNIST-1D.

``ManifoldHead(in_dim, latent_dim, num_classes, manifold=M)`` builds the head that belongs to the geoopt
manifold ``M``: latents on the Poincaré ball (``geoopt.PoincareBall``), on the unit sphere
(``geoopt.Sphere``), or Euclidean latents behind a projection with orthonormal columns
(``geoopt.EuclideanStiefel``). Its ``energy`` is the geometry's analogue of the LPC penalty ``||z||^2``
(on the ball, the squared distance to the origin), so the loss is cross-entropy + gamma * energy with a
growing gamma, exactly as for the Euclidean head; Riemannian Adam (``build_optimizer(model,
"riemannian-adam")``) keeps the manifold parameters on their manifolds. The analyzer then measures the
latents in their own geometry (``lpc_geom.analyze(..., manifold=head.manifold)``).

The trainer builds the same model from one setting: ``lpc-geom train --geometry poincare`` (or
``TrainConfig(geometry="poincare")``), with checkpoints, schedules and history.

    python examples/manifold_head.py                       # Poincaré ball, 30 epochs (~10 s)
    python examples/manifold_head.py --manifold sphere --epochs 10
"""

import argparse

import geoopt
import torch
import torch.nn.functional as F

import lpc_geom
from lpc_geom.data import load_dataset
from lpc_geom.models import Classifier
from lpc_geom.models.backbones import build_backbone
from lpc_geom.models.geometry import ManifoldHead, check_on_manifold
from lpc_geom.optim import build_optimizer

MANIFOLDS = {
    "poincare": lambda: geoopt.PoincareBall(c=1.0),
    "sphere": geoopt.Sphere,
    "stiefel": geoopt.EuclideanStiefel,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifold", choices=sorted(MANIFOLDS), default="poincare")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=4000, help="MNIST-1D samples (train + test)")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the 2-layer MLP backbone")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = load_dataset("mnist1d", num_samples=args.samples)
    backbone = build_backbone("mlp", data.input_shape, hidden=[args.width, args.width])
    head = ManifoldHead(backbone.out_dim, args.latent_dim, data.num_classes, manifold=MANIFOLDS[args.manifold]())
    model = Classifier(backbone, head)  # forward(x) -> HeadOutput(logits, latents, energy)
    optimizer = build_optimizer(model, "riemannian-adam", lr=args.lr, weight_decay=5e-4)
    print(f"{type(head).__name__} on {head.manifold!r} (latents), optimiser {type(optimizer).__name__}")

    gamma, factor, gamma_max = 1e-2, 1.2, 30.0  # the LPC schedule: grow the penalty once classes separate
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(epoch))
        for batch in order.split(128):
            out = model(data.x_train[batch])
            loss = F.cross_entropy(out.logits, data.y_train[batch]) + gamma * out.energy.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(data.x_test).logits.argmax(1) == data.y_test).float().mean().item()
        print(f"epoch {epoch:3d}  gamma {gamma:8.3g}  last batch loss {loss.item():.4f}  test acc {accuracy:.3f}")
        gamma = min(gamma * factor, gamma_max)

    check_on_manifold(model)  # raises, naming the parameter, if one left its manifold
    with torch.no_grad():
        latents = model(data.x_train).latents
    report = lpc_geom.analyze(latents, data.y_train, manifold=head.manifold)
    print(f"\ntraining latents, measured on {head.manifold!r}:\n")
    print(report.to_markdown())
    return report


if __name__ == "__main__":
    main()
