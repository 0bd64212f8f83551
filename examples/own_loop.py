"""LPC in your own training loop: your backbone, lpc_geom's head, penalty, gamma schedule and analyzer.

    python examples/own_loop.py --epochs 30
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import lpc_geom

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=30)
args = parser.parse_args()
torch.manual_seed(0)
x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


class MyNet(torch.nn.Module):  # any backbone that ends in flat features (N, D)
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 128)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return h + F.relu(self.fc2(h))  # a residual block


head = lpc_geom.EuclideanHead(128, 10, penultimate="linear", latent_dim=32)  # the LPC head: z = W2 h, E = ||z||^2
model = lpc_geom.Classifier(MyNet(), head)  # forward -> HeadOutput(logits, latents, energy)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
gamma = lpc_geom.ExponentialGamma(start=1e-2, factor=1.2)  # gamma_e = 0.01 * 1.2**e
for epoch in range(args.epochs):
    for batch in torch.randperm(len(y)).split(128):
        out = model(x[batch])
        loss = F.cross_entropy(out.logits, y[batch]) + lpc_geom.compression_term(out.energy, gamma(epoch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
with torch.no_grad():
    out = model.eval()(x)
print(f"train accuracy {(out.logits.argmax(1) == y).float().mean():.3f}")
print(lpc_geom.analyze(out.latents, y, classifier=head.classifier, logits=out.logits).to_markdown())
