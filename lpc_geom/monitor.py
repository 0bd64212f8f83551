"""Follow latent collapse during any training loop: :class:`CollapseMonitor` and its logger adapters.

Each epoch the monitor computes the collapse figures the trainer records in a run's history
(:data:`~lpc_geom.train.metrics.EPOCH_FIGURES`), for every probe set it follows:

* ``sigma_w_rel`` :math:`= \\operatorname{Tr}\\Sigma_W / \\operatorname{Tr}\\Sigma_T`, the within-class
  share of the latents' total variance (0 when every sample sits on its class centre);
* ``separation_ratio``, the mean over samples of :math:`R_i = \\min_{q \\ne y_i} d(z_i, \\mu_q) /
  d(z_i, \\mu_{y_i})` (geodesic distances to the class centres :math:`\\mu_q`);
* ``norm_cv``, the coefficient of variation :math:`\\operatorname{std}_i r_i / \\operatorname{mean}_i r_i`
  of the latent norms :math:`r_i = \\lVert z_i \\rVert` (geodesic distance to the origin off Euclidean space).

A figure is named ``prefix + figure``; the trainer follows the test set with prefix ``""`` and a fixed
training subsample with prefix ``"train_"``. :meth:`CollapseMonitor.update` evaluates a model on fixed
probe sets; :meth:`CollapseMonitor.record` takes latents a loop already has. The history (one dict per
epoch) is written by :func:`write_history` as ``history.json`` and ``history.csv``, the trainer's format.

Adapters: :func:`lightning_callback` (a PyTorch Lightning ``Callback``; extra ``lpc_geom[lightning]``) and
:class:`TensorBoardMonitor` (``SummaryWriter`` scalars; extra ``lpc_geom[tensorboard]``).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lpc_geom.train.checkpoint import write_json, write_text
from lpc_geom.train.metrics import EPOCH_FIGURES, epoch_collapse_figures
from lpc_geom.train.run_dir import HISTORY, HISTORY_CSV

__all__ = ["CollapseMonitor", "TensorBoardMonitor", "lightning_callback", "write_history"]


def write_history(history: Sequence[Mapping[str, Any]], out_dir: str | Path, *, durable: bool = True) -> None:
    """Write ``history.json`` and ``history.csv`` (one row per epoch) into ``out_dir``, both atomically.

    The CSV's columns are the union of the rows' keys in order of first appearance; finite floats are
    written with 8 significant digits, every other value as ``str`` would (NaN as ``nan``). ``durable``
    False leaves out the fsync (see :func:`lpc_geom.train.checkpoint.write_bytes`).
    """
    out_dir = Path(out_dir)
    write_json(list(history), out_dir / HISTORY, durable=durable)
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) and math.isfinite(v) else v)
                         for k, v in row.items()})
    write_text(buffer.getvalue(), out_dir / HISTORY_CSV, durable=durable)


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _labels(labels, n: int | None, what: str) -> torch.Tensor:
    labels = _as_tensor(labels, what)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{what} must be a 1-D integer array of class indices, got dtype {labels.dtype} "
                         f"and shape {tuple(labels.shape)}")
    if n is not None and len(labels) != n:
        raise ValueError(f"{what} has {len(labels)} entries for {n} samples; pass one label per sample")
    return labels.cpu()


def _check_epoch(epoch) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    return int(epoch)


def output_latents(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The latents of an lpc_geom :class:`~lpc_geom.models.Classifier`: ``model(inputs).latents``."""
    out = model(inputs)
    latents = getattr(out, "latents", None)
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"the model's output ({type(out).__name__}) has no tensor attribute 'latents'; pass "
                        f"CollapseMonitor(latents_of=f) with f(model, inputs) -> latents of shape (n, d)")
    return latents


class CollapseMonitor:
    """Per-epoch collapse figures of fixed probe sets (or of latents handed to it), with their history.

    Parameters
    ----------
    probes : mapping of str to (inputs, labels), or (inputs, labels), optional
        The probe sets :meth:`update` evaluates the model on, keyed by the prefix of their figure names
        (a bare pair is ``{"": (inputs, labels)}``). ``inputs``: a tensor (or array) whose first axis is
        the sample; ``labels``: 1-D integer class indices, one per sample. Without probes only
        :meth:`record` works.
    manifold : geoopt.Manifold, optional
        The manifold the latents live on (Riemannian class means and distances), as in
        :func:`lpc_geom.analyze`; ``None``: Euclidean.
    latents_of : callable, optional
        ``latents_of(model, inputs) -> latents`` of shape ``(n, d)``; default :func:`output_latents`
        (``model(inputs).latents``, the lpc_geom classifiers' output).
    batch_size : int, default 1024
        Probe samples per forward pass in :meth:`update`.

    Attributes
    ----------
    history : list of dict
        One row per epoch: ``{"epoch": e, prefix + figure: value, ...}``, in the order recorded.
    figures : tuple of str
        The figure names (:data:`~lpc_geom.train.metrics.EPOCH_FIGURES`), before their prefix.

    Examples
    --------
    >>> monitor = CollapseMonitor({"": (x_test, y_test)})          # doctest: +SKIP
    >>> for epoch in range(epochs):                                 # doctest: +SKIP
    ...     train_one_epoch(model)
    ...     print(monitor.update(model, epoch)["separation_ratio"])
    >>> monitor.write("runs/mine")                                  # doctest: +SKIP
    """

    figures = EPOCH_FIGURES

    def __init__(self, probes=None, *, manifold=None,
                 latents_of: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 batch_size: int = 1024):
        if isinstance(probes, tuple) and len(probes) == 2 and not isinstance(probes[0], str):
            probes = {"": probes}
        if probes is not None and not isinstance(probes, Mapping):
            raise TypeError("probes must be a mapping {prefix: (inputs, labels)} or one (inputs, labels) pair, "
                            f"got {type(probes).__name__}")
        self.probes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for prefix, pair in (probes or {}).items():
            self._check_prefix(prefix)
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"probe set {prefix!r} must be an (inputs, labels) pair, got {type(pair).__name__}")
            inputs = _as_tensor(pair[0], f"probe set {prefix!r} inputs")
            if inputs.ndim < 1 or len(inputs) < 2:
                raise ValueError(f"probe set {prefix!r} needs at least 2 samples along its first axis, "
                                 f"got shape {tuple(inputs.shape)}")
            self.probes[prefix] = (inputs, _labels(pair[1], len(inputs), f"probe set {prefix!r} labels"))
        if latents_of is not None and not callable(latents_of):
            raise TypeError(f"latents_of must be callable(model, inputs) -> latents, got {type(latents_of).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.manifold = manifold
        self.latents_of = latents_of or output_latents
        self.batch_size = int(batch_size)
        self.history: list[dict[str, Any]] = []

    @staticmethod
    def _check_prefix(prefix) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"a figure prefix must be a str, got {type(prefix).__name__}")

    def compute(self, latents, labels, *, prefix: str = "") -> dict[str, float]:
        """The figures of ``latents`` (shape ``(n, d)``) with classes ``labels``, named ``prefix + figure``.

        Records nothing. A figure undefined for these latents (every sample on its class centre, norms
        on the sphere) is NaN; :func:`lpc_geom.analyze` says why.
        """
        self._check_prefix(prefix)
        latents = _as_tensor(latents, "latents")
        if latents.ndim != 2:
            raise ValueError(f"latents must have shape (n, d), got {tuple(latents.shape)}")
        labels = _labels(labels, len(latents), "labels")
        figures = epoch_collapse_figures(latents.cpu(), labels, manifold=self.manifold)
        return {prefix + name: value for name, value in figures.items()}

    def record(self, epoch: int, latents, labels, *, prefix: str = "") -> dict[str, float]:
        """Compute the figures of ``latents`` (see :meth:`compute`) and add them to epoch ``epoch``'s row.

        Several prefixes may be recorded for one epoch; epochs come in non-decreasing order, and a figure
        is recorded once per epoch. Returns the figures just computed.
        """
        epoch, last = self._check_order(epoch)
        figures = self.compute(latents, labels, prefix=prefix)
        row = self.history[-1] if epoch == last else {"epoch": epoch}
        repeated = sorted(set(figures) & set(row))
        if repeated:
            raise ValueError(f"epoch {epoch} already has {repeated} recorded; use another prefix")
        row.update(figures)
        if epoch != last:
            self.history.append(row)
        return figures

    def _check_order(self, epoch) -> tuple[int, int]:
        """``(epoch, last epoch in the history or -1)``; an epoch before the last is refused."""
        epoch = _check_epoch(epoch)
        last = self.history[-1]["epoch"] if self.history else -1
        if epoch < last:
            raise ValueError(f"epoch {epoch} comes after epoch {last} in the history; record epochs in order")
        return epoch, last

    @torch.no_grad()
    def latents(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Latents of ``inputs`` in eval mode, on CPU, on the device and in the floating dtype of the model's
        parameters (batches of ``batch_size``); the model's train/eval mode is restored after."""
        parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None else None
        was_training = model.training
        model.eval()
        try:
            chunks = []
            for start in range(0, len(inputs), self.batch_size):
                batch = inputs[start: start + self.batch_size].to(device)
                if dtype is not None and batch.is_floating_point():
                    batch = batch.to(dtype)
                latents = self.latents_of(model, batch)
                if not isinstance(latents, torch.Tensor) or latents.ndim != 2 or len(latents) != len(batch):
                    raise ValueError(f"latents_of must return a tensor of shape ({len(batch)}, d) for a batch of "
                                     f"{len(batch)}, got {getattr(latents, 'shape', type(latents).__name__)}")
                chunks.append(latents.detach().cpu())
        finally:
            model.train(was_training)
        return torch.cat(chunks)

    def update(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Evaluate ``model`` on every probe set and :meth:`record` epoch ``epoch``; returns all its figures."""
        if not self.probes:
            raise ValueError("this CollapseMonitor has no probe sets: pass probes={prefix: (inputs, labels)} "
                             "or hand it latents with record(epoch, latents, labels)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._check_order(epoch)  # before any forward pass
        figures: dict[str, float] = {}
        for prefix, (inputs, labels) in self.probes.items():
            figures.update(self.record(epoch, self.latents(model, inputs), labels, prefix=prefix))
        return figures

    def restore(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Continue from a saved history (a resumption): keep each row's epoch and its collapse figures."""
        self.history = [{k: v for k, v in row.items() if k == "epoch" or k.endswith(self.figures)}
                        for row in history]

    def write(self, out_dir: str | Path) -> None:
        """Write the history as ``history.json`` and ``history.csv`` into ``out_dir`` (see :func:`write_history`)."""
        write_history(self.history, out_dir)

    def plot(self, path: str | Path | None = None, *, name: str = "run"):
        """One panel per figure name in the history against the epoch (``sigma_w_rel`` and the separation
        ratio on log axes); saved to ``path`` when given. Returns the matplotlib figure (closed when saved)."""
        if not self.history:
            raise ValueError("the history is empty: record or update at least one epoch before plotting")
        import matplotlib.pyplot as plt

        from lpc_geom.experiments.plots import plot_history, save_figure

        keys = list(dict.fromkeys(k for row in self.history for k in row if k != "epoch"))
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            plot_history(ax, {name: self.history}, key, log=not key.endswith("norm_cv"))
        if path is not None:
            save_figure(fig, path)
        return fig


class TensorBoardMonitor:
    """A :class:`CollapseMonitor` whose figures also go to TensorBoard, one scalar per figure and epoch.

    Needs the ``tensorboard`` package (``pip install 'lpc_geom[tensorboard]'``).

    Parameters
    ----------
    monitor : CollapseMonitor
    writer : str, path or torch.utils.tensorboard.SummaryWriter
        A ``SummaryWriter``, or the log directory of a new one (closed by :meth:`close`).
    tag_prefix : str, default "collapse/"
        Scalars are tagged ``tag_prefix + figure name``, at ``global_step = epoch``.
    """

    def __init__(self, monitor: CollapseMonitor, writer, *, tag_prefix: str = "collapse/"):
        if not isinstance(monitor, CollapseMonitor):
            raise TypeError(f"monitor must be a CollapseMonitor, got {type(monitor).__name__}")
        if not isinstance(tag_prefix, str):
            raise TypeError(f"tag_prefix must be a str, got {type(tag_prefix).__name__}")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("TensorBoardMonitor needs the tensorboard package: pip install "
                              "'lpc_geom[tensorboard]'") from exc
        self._owns_writer = isinstance(writer, (str, Path))
        if self._owns_writer:
            writer = SummaryWriter(log_dir=str(writer))
        elif not isinstance(writer, SummaryWriter):
            raise TypeError(f"writer must be a SummaryWriter or a log directory, got {type(writer).__name__}")
        self.monitor, self.writer, self.tag_prefix = monitor, writer, tag_prefix

    def _log(self, epoch: int, figures: Mapping[str, float]) -> dict[str, float]:
        for name, value in figures.items():
            self.writer.add_scalar(self.tag_prefix + name, value, global_step=epoch)
        return dict(figures)

    def update(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """:meth:`CollapseMonitor.update`, then one scalar per figure."""
        return self._log(epoch, self.monitor.update(model, epoch))

    def record(self, epoch: int, latents, labels, *, prefix: str = "") -> dict[str, float]:
        """:meth:`CollapseMonitor.record`, then one scalar per figure."""
        return self._log(epoch, self.monitor.record(epoch, latents, labels, prefix=prefix))

    def close(self) -> None:
        """Flush the writer (and close it when this adapter opened it)."""
        self.writer.flush()
        if self._owns_writer:
            self.writer.close()


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError as exc:
            raise ImportError("the Lightning callback needs PyTorch Lightning: pip install 'lpc_geom[lightning]'") \
                from exc
    return pl


@functools.cache
def _callback_class():
    pl = _lightning()

    class CollapseCallback(pl.Callback):
        """Runs a :class:`CollapseMonitor` on its probe sets at the end of every training epoch and logs the
        figures with ``pl_module.log`` (to every logger of the trainer) as ``log_prefix + figure``."""

        def __init__(self, monitor: CollapseMonitor, log_prefix: str):
            super().__init__()
            self.monitor, self.log_prefix = monitor, log_prefix

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            figures = self.monitor.update(pl_module, trainer.current_epoch)
            for name, value in figures.items():
                pl_module.log(self.log_prefix + name, value, on_step=False, on_epoch=True)

    return CollapseCallback


def lightning_callback(monitor: CollapseMonitor, *, log_prefix: str = "collapse/"):
    """A PyTorch Lightning ``Callback`` that updates ``monitor`` with the LightningModule each training epoch.

    Needs ``lightning`` (or ``pytorch_lightning``): ``pip install 'lpc_geom[lightning]'``. The monitor must
    have probe sets; its ``latents_of`` maps the LightningModule and a batch of inputs to latents. Each
    figure is logged once per epoch as ``log_prefix + figure`` (read back from ``trainer.logged_metrics``
    or any logger, e.g. a ``CSVLogger``).
    """
    if not isinstance(monitor, CollapseMonitor):
        raise TypeError(f"monitor must be a CollapseMonitor, got {type(monitor).__name__}")
    if not monitor.probes:
        raise ValueError("the Lightning callback evaluates the model on probe sets: build the CollapseMonitor "
                         "with probes={prefix: (inputs, labels)}")
    if not isinstance(log_prefix, str):
        raise TypeError(f"log_prefix must be a str, got {type(log_prefix).__name__}")
    return _callback_class()(monitor, log_prefix)
