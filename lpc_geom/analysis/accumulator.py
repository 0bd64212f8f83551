r"""Streaming collapse statistics: feed batches, get the moment-based part of :func:`lpc_geom.analyze`.

The one-pass formula :math:`\Sigma_W = (\sum z z^\top - \sum_c n_c \mu_c \mu_c^\top)/N` cancels
catastrophically when latents are collapsed (relative error ~1 in float32 for latents like
``1000 + 1e-4 * noise``). This accumulator never forms raw second moments: every
batch is centred on its own per-class means (two passes over the batch, float64), and batches are merged
with the pairwise update of Chan, Golub & LeVeque (1979),

.. math::

    S_W \leftarrow S_W + S_W^{(b)} + \sum_c \frac{n_c n^{(b)}_c}{n_c + n^{(b)}_c}\,
    \delta_c \delta_c^\top, \qquad \delta_c = \mu^{(b)}_c - \mu_c,

(and Pébay's 2008 update for the per-unit central moments of order 3 and 4, Chan's for the norms).
All state is float64 on the device of the first batch, so GPU batches are never copied to the host.
The figures then agree with the in-memory :func:`~lpc_geom.analyze` to float64 rounding.

Produced keys (the ``streaming`` metric groups): ``sigma_w``, ``sigma_w_rel``, ``norm_cv``, ``nc1``,
``nc2_equinorm``, ``nc2_equiangular``, ``nc2_maxangle``, ``etf_distance``, ``nc3`` (with a classifier),
``hypercube_bimodality_fraction``, ``hypercube_sign_agreement``, ``hypercube_vertex_residual``,
``hypercube_min_hamming``, ``hypercube_distinct_codes``, ``gw_etf``, ``gw_hypercube`` (from the class
centres). The distance-based figures (separation ratio, NC4), the entropy, the GMM figures and the Fisher
figures need the latents themselves after the class centres are known, and are not produced.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from lpc_geom.analysis._registry import AnalysisContext, selected_groups
from lpc_geom.analysis._validation import (
    EncodedLabels,
    check_classifier,
    check_latents,
    check_min_class_size,
    check_output_classes,
    class_order,
    labels_to_array,
)
from lpc_geom.analysis.collapse import (
    ClassStatistics,
    UnitStatistics,
    central_power_sums,
    centred_means_svd,
    class_abs_max,
    merge_central_moments,
)
from lpc_geom.analysis.geometry import class_means, geometry_from_manifold
from lpc_geom.analysis.options import AnalyzeOptions
from lpc_geom.analysis.report import CollapseReport, build_report

__all__ = ["CollapseAccumulator"]


class CollapseAccumulator:
    """Accumulate moment statistics of latents batch by batch.

    Parameters
    ----------
    manifold : geoopt manifold or None
        As in :func:`lpc_geom.analyze` (chart coordinates are accumulated).
    bimodality_threshold : float
        As in :func:`lpc_geom.analyze`.

    Examples
    --------
    >>> acc = CollapseAccumulator()
    >>> for x, y in loader:                      # doctest: +SKIP
    ...     acc.update(model(x).latents, y)
    >>> report = acc.report(classifier=model.head.classifier)  # doctest: +SKIP
    """

    def __init__(self, *, manifold=None, bimodality_threshold: float = AnalyzeOptions.bimodality_threshold) -> None:
        self._geom = geometry_from_manifold(manifold)
        self._manifold = manifold
        self._options = AnalyzeOptions(bimodality_threshold=bimodality_threshold)
        self._labels: list = []
        self._slot: dict = {}
        self._integer: bool | None = None
        self._device: torch.device | None = None
        self._d: int | None = None
        self._eps = 0.0
        self.n = 0

    # -- state ---------------------------------------------------------------------------------------
    def _init_state(self, d: int, device: torch.device) -> None:
        f64 = {"dtype": torch.float64, "device": device}
        self._d, self._device = d, device
        self._count = torch.zeros(0, **f64)
        self._mean = torch.zeros(0, d, **f64)
        self._pos = torch.zeros(0, d, **f64)
        self._neg = torch.zeros(0, d, **f64)
        self._abs_max = torch.zeros(0, d, **f64)
        self._scatter = torch.zeros(d, d, **f64)
        self._u_mean = torch.zeros(d, **f64)
        self._u_m = [torch.zeros(d, **f64) for _ in range(3)]  # sums of central powers 2, 3, 4
        self._r_mean = 0.0
        self._r_m2 = 0.0

    def _slots(self, labels, n: int) -> torch.Tensor:
        arr, integer = labels_to_array(labels, n)
        if self._integer is None:
            self._integer = integer
        elif integer != self._integer:
            raise TypeError("labels changed type between batches (integers vs strings)")
        uniq, inv = np.unique(arr, return_inverse=True)
        new = [u for u in uniq.tolist() if u not in self._slot]
        for lab in new:  # once per new class, not per sample
            self._slot[lab] = len(self._labels)
            self._labels.append(lab)
        if new:
            grow = len(new)
            f64 = {"dtype": torch.float64, "device": self._device}
            self._count = torch.cat([self._count, torch.zeros(grow, **f64)])
            self._mean = torch.cat([self._mean, torch.zeros(grow, self._d, **f64)])
            self._pos = torch.cat([self._pos, torch.zeros(grow, self._d, **f64)])
            self._neg = torch.cat([self._neg, torch.zeros(grow, self._d, **f64)])
            self._abs_max = torch.cat([self._abs_max, torch.zeros(grow, self._d, **f64)])
        slot_of_uniq = np.array([self._slot[u] for u in uniq.tolist()], dtype=np.int64)
        return torch.from_numpy(slot_of_uniq[inv.reshape(-1)]).to(self._device)

    def update(self, latents, labels) -> CollapseAccumulator:
        """Add a batch: ``latents`` (B, d) array or tensor, ``labels`` (B,). Returns ``self``.

        A batch may hold a single class or a single sample; ``d`` and the label type must not change.
        """
        z, eps = check_latents(latents, min_samples=1)
        if self._d is None:
            self._init_state(z.shape[1], z.device)
        elif z.shape[1] != self._d:
            raise ValueError(f"batch has d = {z.shape[1]}, earlier batches d = {self._d}")
        z = self._geom.check_points(z.to(self._device), eps)
        slots = self._slots(labels, z.shape[0])
        self._eps = max(self._eps, eps)
        u = self._geom.to_chart(z)
        nb = z.shape[0]
        K = len(self._labels)

        # Class means and within-class scatter (Chan merge, per class).
        bmean, bcount, dev = class_means(u, slots, K, residuals=True)
        bcount = bcount.to(torch.float64)
        self._scatter += dev.T @ dev
        total = self._count + bcount
        present = bcount > 0
        w = torch.where(present, self._count * bcount / total.clamp_min(1.0), torch.zeros_like(total))
        delta = torch.where(present[:, None], bmean - self._mean, torch.zeros_like(bmean))
        self._scatter += (delta * w[:, None]).T @ delta
        self._mean = self._mean + delta * (bcount / total.clamp_min(1.0))[:, None]
        self._count = total
        self._pos.index_add_(0, slots, (u > 0).to(torch.float64))
        self._neg.index_add_(0, slots, (u < 0).to(torch.float64))
        class_abs_max(u, slots, K, out=self._abs_max)

        # Per-unit central moments 2-4 over all samples (Pébay's pairwise update).
        na, n = float(self.n), float(self.n + nb)
        bm, block_sums = central_power_sums(u)
        self._u_mean, self._u_m = merge_central_moments(na, self._u_mean, self._u_m, nb, bm, block_sums)

        # Norms (distance to the origin): Chan's mean/variance merge.
        r = self._geom.origin_norm(z)
        if r is not None:
            rm = float(r.mean())
            r2 = float(((r - rm) ** 2).sum())
            dr = rm - self._r_mean
            self._r_m2 += r2 + dr * dr * na * nb / n
            self._r_mean += dr * nb / n
        self.n += nb
        return self

    # -- results -------------------------------------------------------------------------------------
    @property
    def classes(self) -> np.ndarray:
        """Labels seen so far, in the analyzers' order (:func:`~lpc_geom.analysis._validation.class_order`)."""
        labels = labels_to_array(self._labels, len(self._labels))[0]
        return labels[class_order(labels)]

    def statistics(self, *, min_class_size: int = 2) -> ClassStatistics:
        """The accumulated :class:`~lpc_geom.analysis.collapse.ClassStatistics` (classes in sorted order)."""
        if self.n == 0:
            raise ValueError("no batches were added")
        labels = labels_to_array(self._labels, len(self._labels))[0]
        order = class_order(labels)
        classes = labels[order]
        if len(classes) < 2:
            raise ValueError(
                f"labels name only one class ({classes[0]!r}); collapse figures compare classes and need K >= 2"
            )
        if self.n < 2:
            raise ValueError("at least 2 samples are needed")
        idx = torch.from_numpy(order).to(self._device)
        count = self._count[idx]
        check_min_class_size(count.cpu().numpy(), classes, min_class_size)
        scatter = self._scatter
        n = self.n
        means = self._mean[idx]
        svals, axes = centred_means_svd(means)

        has_norm = self._geom.has_origin
        return ClassStatistics(
            geometry=self._geom,
            n=n,
            d=self._d,
            classes=classes,
            counts=count,
            means=means,
            within_trace=float(torch.diagonal(scatter).sum()) / n,
            mean_svals=svals,
            mean_axes=axes,
            within_axes=((axes @ scatter) * axes).sum(1) / n,
            norm_mean=self._r_mean if has_norm else None,
            norm_var=self._r_m2 / n if has_norm else None,
            unit_source=UnitStatistics(
                unit_mean=self._u_mean,
                unit_m2=self._u_m[0] / n,
                unit_m3=self._u_m[1] / n,
                unit_m4=self._u_m[2] / n,
                sign_pos=self._pos[idx],
                sign_neg=self._neg[idx],
                abs_max=self._abs_max[idx],
            ),
            eps=self._eps,
        )

    def report(
        self,
        *,
        classifier=None,
        classes=None,
        min_class_size: int = AnalyzeOptions.min_class_size,
        gw_restarts: int = AnalyzeOptions.gw_restarts,
        seed: int = AnalyzeOptions.seed,
        groups=None,
    ) -> CollapseReport:
        """A :class:`~lpc_geom.analysis.report.CollapseReport` of the moment-based and class-centre figures.

        ``classifier`` ((W, b), W, nn.Linear-like, or a module head with a (K, d) ``.weight``) adds ``nc3``;
        ``classes``, ``min_class_size``, ``gw_restarts``, ``seed`` and ``groups`` as in ``analyze``.
        """
        options = replace(self._options, gw_restarts=gw_restarts, seed=seed)
        out_classes = None if classes is None else check_output_classes(classes)
        s = self.statistics(min_class_size=min_class_size)
        enc = EncodedLabels(np.zeros(0, dtype=np.int64), s.classes, bool(self._integer))
        clf = check_classifier(classifier, s.d, self._device) if classifier is not None else None
        ctx = AnalysisContext(
            stats=s,
            encoded=enc,
            classifier=clf,
            manifold=self._manifold,
            options=options,
            output_classes=out_classes,
        )
        return build_report(ctx, selected_groups(groups, streaming=True))

