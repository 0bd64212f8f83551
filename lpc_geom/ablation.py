"""The rows of the LPC paper's ablation (Sbailò & Ghiringhelli, arXiv 2310.08224), as data.

"Pen" in the row names stands for *penultimate layer*: NoPen is the plain backbone -> classifier
baseline, LinPen / NonlinPen add a low-dimensional linear / nonlinear penultimate layer without any
penalty, and LPC adds the compression term ``gamma * ||z||^2`` on a linear penultimate layer.

=============  ============  ======  =======  ======  ==========
row            penultimate   width   penalty  SupCon  classifier
=============  ============  ======  =======  ======  ==========
NoPen          none          --      no       no      linear
LinPen         linear        inter.  no       no      linear
NonlinPen      nonlinear     inter.  no       no      linear
LPC            linear        inter.  yes      no      linear
LPC-Narrow     linear        narrow  yes      no      linear
LPC-Wide       linear        wide    yes      no      linear
LPC-NoPen      none          --      yes      no      linear
LPC-SCL        linear        inter.  yes      yes     linear
SCL            none          --      no       yes     linear
ArcFace        none          --      no       no      arcface
CosFace        none          --      no       no      cosface
=============  ============  ======  =======  ======  ==========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Penultimate = Literal["none", "linear", "nonlinear"]
Width = Literal["narrow", "intermediate", "wide"]
ClassifierKind = Literal["linear", "arcface", "cosface"]

#: Latent widths (narrow, intermediate, wide). The paper uses 16/64/128 on CIFAR-10 and 32/128/256 on
#: CIFAR-100; problems with more than 10 classes get the CIFAR-100 widths.
WIDTHS_UP_TO_10_CLASSES = {"narrow": 16, "intermediate": 64, "wide": 128}
WIDTHS_MORE_CLASSES = {"narrow": 32, "intermediate": 128, "wide": 256}


@dataclass(frozen=True)
class Row:
    """One ablation row: the head's architecture and which loss terms are active."""

    name: str
    penultimate: Penultimate
    width: Width | None
    penalty: bool
    supcon: bool
    classifier: ClassifierKind
    description: str

    def latent_dim(self, num_classes: int) -> int | None:
        """Width of the penultimate layer for ``num_classes`` classes (None: no penultimate layer)."""
        if self.width is None:
            return None
        table = WIDTHS_UP_TO_10_CLASSES if num_classes <= 10 else WIDTHS_MORE_CLASSES
        return table[self.width]


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row("NoPen", "none", None, False, False, "linear", "baseline: backbone -> linear classifier"),
        Row("LinPen", "linear", "intermediate", False, False, "linear", "linear penultimate, no penalty"),
        Row("NonlinPen", "nonlinear", "intermediate", False, False, "linear",
            "nonlinear (SiLU) penultimate, no penalty"),
        Row("LPC", "linear", "intermediate", True, False, "linear", "linear penultimate + gamma*||z||^2"),
        Row("LPC-Narrow", "linear", "narrow", True, False, "linear", "LPC with the narrow width"),
        Row("LPC-Wide", "linear", "wide", True, False, "linear", "LPC with the wide width"),
        Row("LPC-NoPen", "none", None, True, False, "linear", "penalty on the backbone output h"),
        Row("LPC-SCL", "linear", "intermediate", True, True, "linear", "LPC + supervised contrastive loss"),
        Row("SCL", "none", None, False, True, "linear", "cross-entropy + supervised contrastive loss"),
        Row("ArcFace", "none", None, False, False, "arcface", "additive angular margin (cosine classifier)"),
        Row("CosFace", "none", None, False, False, "cosface", "additive cosine margin (cosine classifier)"),
    )
}


def get_row(name: str) -> Row:
    """Look up an ablation row by name (case-insensitive); the error lists the accepted names."""
    for key, row in ROWS.items():
        if key.lower() == name.lower():
            return row
    raise ValueError(f"unknown ablation row {name!r}; accepted rows: {', '.join(ROWS)}")
