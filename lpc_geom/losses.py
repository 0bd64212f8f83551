r"""Loss terms of the LPC paper's ablation and their combination per row.

=================  ==========================================================================
term               formula
=================  ==========================================================================
cross-entropy      :math:`\mathrm{CE} = -\frac1N \sum_i \log \operatorname{softmax}(f_i)_{y_i}`
compression (LPC)  :math:`\gamma \frac1N \sum_i E_i`, :math:`E_i = \lVert z_i \rVert^2` (Euclidean)
SupCon             Khosla et al. 2020, :math:`\mathcal L^{sup}_{out}` on normalised latents, tau 0.05
ArcFace            CE on :math:`s\cos(\theta_{y} + m)` (target), :math:`s\cos\theta_k` (others)
CosFace            CE on :math:`s(\cos\theta_{y} - m)` (target), :math:`s\cos\theta_k` (others)
=================  ==========================================================================

:class:`Objective` puts them together for an :class:`~lpc_geom.ablation.Row`:

.. math::

    \mathcal L = \mathrm{CE}(\tilde f, y)
                 + [\text{row.penalty}]\ \gamma\, \overline{E}
                 + [\text{row.supcon}]\ \lambda\, \mathcal L^{sup}(z, y),

with :math:`\tilde f` the plain logits, or the ArcFace / CosFace margin logits (margin and scale from
a :class:`MarginSchedule`) for those rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lpc_geom.ablation import Row, get_row
from lpc_geom.models.base import HeadOutput

__all__ = [
    "ARCFACE_MARGINS",
    "COSFACE_MARGINS",
    "MARGIN_SCALES",
    "MarginSchedule",
    "Objective",
    "arcface_logits",
    "compression_term",
    "cosface_logits",
    "supcon_loss",
]

#: The paper's margin ramps (start, end) and the scale ramp shared by ArcFace and CosFace.
ARCFACE_MARGINS = (0.1, 0.5)
COSFACE_MARGINS = (0.05, 0.25)
MARGIN_SCALES = (16.0, 64.0)


def compression_term(energy: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    r"""LPC compression term :math:`\gamma \cdot \frac1N \sum_i E_i`.

    Parameters
    ----------
    energy : Tensor, shape (N,)
        Per-sample collapse energy (``HeadOutput.energy``; :math:`\lVert z_i\rVert^2` for Euclidean
        heads).
    gamma : float or 0-d Tensor
        Penalty weight (non-negative).

    Returns
    -------
    Tensor
        Scalar ``gamma * energy.mean()``.
    """
    if energy.dim() != 1:
        raise ValueError(f"energy must have shape (N,), got {tuple(energy.shape)}")
    if float(gamma) < 0:
        raise ValueError(f"gamma must be non-negative, got {float(gamma)}")
    return gamma * energy.mean()


def _check_labels(labels: torch.Tensor, n: int, num_classes: int | None = None) -> None:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if num_classes is not None and n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020, :math:`\mathcal L^{sup}_{out}`).

    With :math:`u_i = z_i / \lVert z_i \rVert`, :math:`A(i) = \{a \ne i\}` and positives
    :math:`P(i) = \{p \ne i : y_p = y_i\}`:

    .. math::

        \mathcal L^{sup} = \frac{1}{|I^+|} \sum_{i \in I^+} \frac{-1}{|P(i)|} \sum_{p \in P(i)}
            \Big[\frac{u_i \cdot u_p}{\tau} - \log \sum_{a \in A(i)} \exp\frac{u_i \cdot u_a}{\tau}\Big],

    where :math:`I^+ = \{i : |P(i)| > 0\}`: anchors whose class has no other sample in the batch have
    no positive pair and are excluded from the mean (their term would be 0/0). If no anchor has a
    positive the loss is 0 (still connected to ``features`` so ``backward`` works). The log-sum-exp is
    evaluated stably (``torch.logsumexp``). Several augmented views enter as extra rows of ``features``
    with repeated labels. Unlike the reference implementation, the loss is not rescaled by
    ``temperature / base_temperature``.

    Parameters
    ----------
    features : Tensor, shape (N, d)
        Latents (normalised here with an epsilon, so zero rows are safe).
    labels : Tensor, shape (N,)
        Integer class labels.
    temperature : float, default 0.05
        :math:`\tau` (the LPC paper's value).

    Returns
    -------
    Tensor
        Scalar loss.
    """
    if features.dim() != 2:
        raise ValueError(f"features must have shape (N, d), got {tuple(features.shape)}")
    _check_labels(labels, features.shape[0])
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = features.shape[0]
    u = F.normalize(features, dim=1, eps=1e-8)
    sim = (u @ u.t()) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    log_denominator = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1)
    log_prob = sim - log_denominator[:, None]
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(dim=1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return features.sum() * 0.0
    mean_log_prob_pos = (log_prob * positives).sum(dim=1)[anchors] / n_pos[anchors]
    return -mean_log_prob_pos.mean()


def _target_mask(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if cos.dim() != 2:
        raise ValueError(f"cos must have shape (N, K), got {tuple(cos.shape)}")
    _check_labels(labels, cos.shape[0], cos.shape[1])
    return F.one_hot(labels.long(), cos.shape[1]).bool()


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float, scale: float, *,
                   easy_margin: bool = False, eps: float = 1e-6) -> torch.Tensor:
    r"""ArcFace (additive angular margin, Deng et al. 2019) logits from cosines.

    .. math::

        \tilde f_{ik} = \begin{cases} s\, \psi(\cos\theta_{iy_i}) & k = y_i \\
                                      s \cos\theta_{ik} & k \ne y_i \end{cases}, \qquad
        \psi(c) = \cos(\theta + m) = c\cos m - \sqrt{1 - c^2}\,\sin m \quad (c = \cos\theta).

    :math:`\cos(\theta + m)` decreases in :math:`\theta` only while :math:`\theta + m \le \pi`.
    Beyond that (:math:`\cos\theta \le \cos(\pi - m)`) the standard threshold replaces it by the
    CosFace-like :math:`\psi(c) = c - m \sin m`, which keeps the target logit increasing in ``c``.
    With ``easy_margin`` the margin is applied only where :math:`\cos\theta > 0` (:math:`\psi(c) = c`
    elsewhere). The target cosine is clamped to :math:`[-1 + \epsilon, 1 - \epsilon]` before the
    square root, so gradients stay finite at :math:`\cos\theta = \pm 1` (where
    :math:`d\sqrt{1-c^2}/dc` diverges, as does the derivative of ``acos``).

    Parameters
    ----------
    {cosine_inputs}
    margin : float
        Angular margin ``m`` (radians, in ``[0, pi/2]``).
    scale : float
        Scale ``s``.
    easy_margin : bool, default False
        Use the easy-margin variant instead of the threshold.
    eps : float, default 1e-6
        Clamp distance from :math:`\pm 1`.

    Returns
    -------
    Tensor, shape (N, K)
        Logits for cross-entropy.
    """
    if not 0.0 <= margin <= math.pi / 2:
        raise ValueError(f"ArcFace margin must lie in [0, pi/2], got {margin}")
    target = _target_mask(cos, labels)
    c = cos.clamp(-1.0 + eps, 1.0 - eps)
    sine = torch.sqrt(1.0 - c * c)
    phi = c * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        phi = torch.where(c > 0, phi, c)
    else:
        phi = torch.where(c > math.cos(math.pi - margin), phi, c - margin * math.sin(margin))
    return scale * torch.where(target, phi, cos)


def cosface_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    r"""CosFace (large-margin cosine, Wang et al. 2018) logits from cosines.

    .. math::

        \tilde f_{ik} = s\,(\cos\theta_{ik} - m\,[k = y_i]).

    Parameters
    ----------
    {cosine_inputs}
    margin : float
        Cosine margin ``m`` (non-negative).
    scale : float
        Scale ``s``.

    Returns
    -------
    Tensor, shape (N, K)
    """
    if margin < 0:
        raise ValueError(f"CosFace margin must be non-negative, got {margin}")
    target = _target_mask(cos, labels)
    return scale * (cos - margin * target.to(cos.dtype))


# The parameters both margin logits take, documented once. (Filled in here rather than by a decorator:
# mutation testing leaves decorated functions alone.)
_COSINE_INPUTS = """cos : Tensor, shape (N, K)
        Cosines from a cosine classifier.
    labels : Tensor, shape (N,)
        Integer class labels."""
for _margin_logits in (arcface_logits, cosface_logits):
    if _margin_logits.__doc__:  # None under python -OO
        _margin_logits.__doc__ = _margin_logits.__doc__.replace("{cosine_inputs}", _COSINE_INPUTS)
del _margin_logits


@dataclass(frozen=True)
class MarginSchedule:
    r"""Linear ramp of margin and scale over the training epochs.

    .. math::

        t(e) = \min\!\Big(\frac{\max(e, 0)}{E - 1}, 1\Big), \qquad
        m(e) = m_0 + t (m_1 - m_0), \qquad s(e) = s_0 + t (s_1 - s_0),

    for 0-based epoch ``e`` and ``E = epochs``: the first epoch uses the start values, the last epoch
    (``e = E - 1``) and any later one the end values (with ``E = 1``, the end values throughout).
    The paper's ranges are :meth:`arcface` (margin 0.1 -> 0.5) and :meth:`cosface`
    (0.05 -> 0.25), both with scale 16 -> 64.

    Parameters
    ----------
    start_margin, end_margin : float
        Margin at the first and last epoch.
    start_scale, end_scale : float
        Scale at the first and last epoch (positive).
    epochs : int
        Number of epochs the ramp spans (usually the training length).
    """

    start_margin: float
    end_margin: float
    start_scale: float
    end_scale: float
    epochs: int

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if min(self.start_margin, self.end_margin) < 0:
            raise ValueError("margins must be non-negative")
        if min(self.start_scale, self.end_scale) <= 0:
            raise ValueError("scales must be positive")

    @classmethod
    def arcface(cls, epochs: int) -> MarginSchedule:
        """The paper's ArcFace schedule: margin 0.1 -> 0.5, scale 16 -> 64 over ``epochs``."""
        return cls(*ARCFACE_MARGINS, *MARGIN_SCALES, epochs)

    @classmethod
    def cosface(cls, epochs: int) -> MarginSchedule:
        """The paper's CosFace schedule: margin 0.05 -> 0.25, scale 16 -> 64 over ``epochs``."""
        return cls(*COSFACE_MARGINS, *MARGIN_SCALES, epochs)

    def at(self, epoch: int) -> tuple[float, float]:
        """``(margin, scale)`` for 0-based ``epoch``."""
        t = 1.0 if self.epochs == 1 else min(max(epoch, 0) / (self.epochs - 1), 1.0)
        return (self.start_margin + t * (self.end_margin - self.start_margin),
                self.start_scale + t * (self.end_scale - self.start_scale))


class Objective:
    r"""The training loss of an ablation row.

    .. math::

        \mathcal L = \mathrm{CE}(\tilde f, y) + [\text{penalty}]\ \gamma\,\tfrac1N\textstyle\sum_i E_i
                     + [\text{supcon}]\ \lambda\, \mathcal L^{sup}(z, y; \tau)

    where :math:`\tilde f` is ``out.logits`` for linear-classifier rows and
    :func:`arcface_logits` / :func:`cosface_logits` of the cosines ``out.logits`` for the ArcFace /
    CosFace rows, with ``(margin, scale) = margin_schedule.at(epoch)``. LPC-SCL is the LPC penalty plus
    SupCon on the same latents ``z``.

    Parameters
    ----------
    row : Row or str
        Ablation row (or its name).
    epochs : int, optional
        Training length; builds the paper's margin schedule for the ArcFace / CosFace rows
        (required for them unless ``margin_schedule`` is given).
    supcon_weight : float, default 1.0
        :math:`\lambda` (the paper adds SupCon to CE unweighted).
    temperature : float, default 0.05
        SupCon :math:`\tau`.
    margin_schedule : MarginSchedule, optional
        Overrides the paper's schedule for the margin rows.
    easy_margin : bool, default False
        ArcFace easy-margin variant (see :func:`arcface_logits`).

    Notes
    -----
    ``objective(out, labels, gamma=..., epoch=...)`` returns ``(loss, parts)``; ``parts`` maps the
    active terms among ``"ce"``, ``"compression"`` (already multiplied by gamma) and ``"supcon"``
    (already multiplied by its weight) to detached scalars that sum to ``loss``. ``gamma`` is ignored by
    rows without the penalty and ``epoch`` by rows without a margin.
    """

    def __init__(self, row: Row | str, *, epochs: int | None = None, supcon_weight: float = 1.0,
                 temperature: float = 0.05, margin_schedule: MarginSchedule | None = None,
                 easy_margin: bool = False):
        self.row = get_row(row) if isinstance(row, str) else row
        if supcon_weight < 0 or temperature <= 0:
            raise ValueError(f"supcon_weight must be >= 0 and temperature > 0, got {supcon_weight} and "
                             f"{temperature}")
        self.supcon_weight, self.temperature, self.easy_margin = supcon_weight, temperature, easy_margin
        if self.row.classifier == "linear":
            if margin_schedule is not None:
                raise ValueError(f"row {self.row.name} has a linear classifier; margin_schedule applies only "
                                 "to the ArcFace and CosFace rows")
            self.margin_schedule = None
        elif margin_schedule is not None:
            self.margin_schedule = margin_schedule
        elif epochs is None:
            raise ValueError(f"row {self.row.name} needs epochs (or a margin_schedule) for its margin ramp")
        else:
            self.margin_schedule = getattr(MarginSchedule, self.row.classifier)(epochs)
        self._checked_cosines = False

    def margin_at(self, epoch: int) -> tuple[float, float] | None:
        """``(margin, scale)`` used at ``epoch``, or None for rows without a margin."""
        return None if self.margin_schedule is None else self.margin_schedule.at(epoch)

    def __call__(self, out: HeadOutput, labels: torch.Tensor, *, gamma: float | torch.Tensor,
                 epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts for one batch (see the class docstring)."""
        logits = out.logits
        if self.margin_schedule is not None:
            if not self._checked_cosines:
                if bool((logits.detach().abs() > 1.0 + 1e-5).any()):
                    raise ValueError(f"row {self.row.name} needs cosines in [-1, 1] from a cosine classifier; "
                                     f"got logits up to {float(logits.detach().abs().max()):.3g}")
                self._checked_cosines = True
            margin, scale = self.margin_schedule.at(epoch)
            if self.row.classifier == "arcface":
                logits = arcface_logits(logits, labels, margin, scale, easy_margin=self.easy_margin)
            else:
                logits = cosface_logits(logits, labels, margin, scale)
        ce = F.cross_entropy(logits, labels)
        loss, parts = ce, {"ce": ce.detach()}
        if self.row.penalty:
            compression = compression_term(out.energy, gamma)
            loss = loss + compression
            parts["compression"] = compression.detach()
        if self.row.supcon:
            supcon = self.supcon_weight * supcon_loss(out.latents, labels, self.temperature)
            loss = loss + supcon
            parts["supcon"] = supcon.detach()
        return loss, parts
