"""Small networks shared by several test modules (importable because pytest puts tests/ on sys.path)."""

from torch import nn


class TinyBackbone(nn.Module):
    """``in_dim -> 32 -> out_dim`` with SiLU between, exposing ``out_dim`` like the real backbones."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 32), nn.SiLU(), nn.Linear(32, out_dim))
        self.out_dim = out_dim

    def forward(self, x):
        return self.net(x)
