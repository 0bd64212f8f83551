"""Batch-level image augmentation: random crop with constant padding and horizontal flip.

Every sample of a batch draws its own crop offset and flip, but the work is a single ``torch.gather``
over the whole batch (no Python loop per sample), so it is cheap on CPU and runs on the batch's device.
Randomness comes only from the ``torch.Generator`` passed in, so a run is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    padding: int = 4,
    flip_prob: float = 0.5,
    fill: float = 0.0,
) -> torch.Tensor:
    """Randomly crop (after constant padding) and horizontally flip each image of a batch.

    Each image is padded by ``padding`` pixels of value ``fill`` on all four sides and a window of the
    original size is cut at an offset drawn uniformly from ``{0, ..., 2 * padding}`` in each direction
    (so the output is the input shifted by ``-padding..padding`` pixels, with ``fill`` where the shift
    uncovers the border); then, with probability ``flip_prob``, it is mirrored left to right.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
        Batch of images (any floating dtype, any device).
    generator : torch.Generator
        Source of the random offsets and flips. Numbers are drawn on the generator's device and moved
        to ``x``'s device, so a CPU generator works for a GPU batch.
    padding : int, optional
        Maximum shift in pixels (>= 0); 0 disables cropping.
    flip_prob : float, optional
        Probability of a horizontal flip, in [0, 1]; 0 disables flipping.
    fill : float, optional
        Value of the padding. Applied to normalised inputs, 0 is the dataset's mean colour.

    Returns
    -------
    Tensor, shape (B, C, H, W)
        A new tensor; ``x`` is not modified.

    Raises
    ------
    ValueError
        If ``x`` is not 4-D, ``padding < 0`` or ``flip_prob`` is outside [0, 1].
    """
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    b, c, h, w = x.shape
    gen_device = generator.device
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    flip = (torch.rand((b,), generator=generator, device=gen_device) < flip_prob).to(x.device)

    padded = F.pad(x, (padding, padding, padding, padding), mode="constant", value=fill)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    col = torch.arange(w, device=x.device)
    # A flipped crop reads its columns right to left, so crop and flip are one gather.
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - col, col)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


@dataclass(frozen=True)
class RandomCropFlip:
    """Picklable callable form of :func:`random_crop_flip`, used as ``Dataset.augment``.

    Parameters
    ----------
    padding : int, optional
        Maximum shift in pixels.
    flip_prob : float, optional
        Probability of a horizontal flip.
    fill : float, optional
        Padding value (in the units of the inputs it receives).

    Raises
    ------
    ValueError
        If ``padding < 0`` or ``flip_prob`` is outside [0, 1].
    """

    padding: int = 4
    flip_prob: float = 0.5
    fill: float = 0.0

    def __post_init__(self) -> None:
        if int(self.padding) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a (B, C, H, W) batch; see :func:`random_crop_flip`."""
        return random_crop_flip(x, generator, self.padding, self.flip_prob, self.fill)
