"""End-to-end training of LPC classifiers (and every ablation row) with resumable, atomic checkpoints.

The trainer is deterministic on CPU: every epoch draws its permutation (and its augmentation) from a
generator seeded by ``(seed, epoch)``, so a run resumed from the checkpoint of epoch ``e`` takes exactly
the steps an uninterrupted run takes. Under ``torchrun`` it trains with DistributedDataParallel (see
:mod:`lpc_geom.train.distributed`).

While it trains, SIGINT and SIGTERM stop it at the next step boundary: it writes a checkpoint of that
step (the generator state and the epoch's partial sums included, so a resumption takes the remaining
steps exactly), marks the run ``stopped`` and raises :class:`TrainingStopped`. A non-finite loss,
parameter or latent raises :class:`NonFiniteLossError` after writing ``checkpoint_last_good.pt``, the
state at the end of the last finite epoch. The run directory's rules (lock, manifest, refusal to write
over another run) are those of :mod:`lpc_geom.train.run_dir`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import signal
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lpc_geom.ablation import get_row
from lpc_geom.config import TrainConfig
from lpc_geom.data import Dataset, load_dataset, stratified_split
from lpc_geom.losses import Objective
from lpc_geom.models import Classifier, build_model
from lpc_geom.models.backbones import backbone_record
from lpc_geom.models.fold import fold_batch_norms, folds_for_evaluation
from lpc_geom.monitor import CollapseMonitor, write_history
from lpc_geom.optim import build_optimizer, resolve_optimizer
from lpc_geom.train.checkpoint import load_checkpoint, save_checkpoint, write_bytes, write_json
from lpc_geom.train.distributed import (
    all_reduce_sum,
    check_batch_size,
    cleanup,
    init_distributed,
    launched_world_size,
    shard_batch,
)
from lpc_geom.train.run_dir import (
    CHECKPOINT,
    CONFIG,
    LAST_GOOD,
    LAST_GOOD_CHANGES,
    LATENTS,
    RESUMABLE_CHANGES,
    ROBUSTNESS_FILES,
    SUMMARY,
    RunWriter,
    config_differences,
    run_files,
    stamp,
)
from lpc_geom.train.schedules import build_gamma_schedule, lr_factor
from lpc_geom.train.signals import STOP_SIGNALS, StopSignals, TrainingStopped

#: Training samples whose latents the per-epoch history follows (``train_sigma_w_rel`` etc.).
TRAIN_PROBE_SAMPLES = 2000


class NonFiniteLossError(RuntimeError):
    """The loss, a parameter or a latent became NaN or infinite.

    The message (one line) names the epoch, the step, gamma, the learning rate and the path of
    ``checkpoint_last_good.pt``, which holds the state at the end of the last finite epoch (or the state
    the training started from, when no epoch finished); ``last_good`` is that path.
    """

    def __init__(self, message: str, last_good: Path | None = None):
        super().__init__(message)
        self.last_good = last_good


class CollapseToOriginWarning(UserWarning):
    """Accuracy fell to chance while gamma grows: every class collapsed onto the origin."""


@dataclass
class RunResult:
    """What :func:`train` returns: the run directory, the per-epoch history and the final figures."""

    out_dir: Path
    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch.cuda.is_available() is False; use 'auto' or 'cpu'")
    return torch.device(name)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def model_from_config(config: TrainConfig, data: Dataset,
                      backbone: nn.Module | Callable[..., nn.Module] | str | None = None) -> Classifier:
    """The :class:`Classifier` a config describes: backbone, the row's head, in the config's geometry.

    The head is the one :data:`lpc_geom.models.build.HEADS` registers for ``config.geometry``: geometry
    heads (sphere, Poincaré ball, Stiefel) replace the linear penultimate layer of the LPC rows; rows
    without a linear penultimate layer exist only in Euclidean geometry. ``backbone`` (a module, a
    factory ``factory(input_shape, **backbone_options)`` or an import path) replaces ``config.backbone``
    (see :func:`lpc_geom.models.backbones.make_backbone`).
    """
    return build_model(config.backbone if backbone is None else backbone, config.row, data.input_shape,
                       data.num_classes, latent_dim=config.latent_dim, bias=config.classifier_bias,
                       head=config.geometry, head_options=config.geometry_options, **config.backbone_options)


def _with_backbone(config: TrainConfig | Mapping[str, Any], backbone: str) -> TrainConfig:
    if isinstance(config, Mapping):
        return TrainConfig(**{**config, "backbone": backbone})
    return config.replace(backbone=backbone)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
            batch_size: int = 1024, fold: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and latents of ``x`` in eval mode (on CPU, in ``dtype``); restores the previous mode.

    ``fold``: evaluate the model's copy with its batch norms folded into the preceding convolutions
    (:func:`~lpc_geom.models.fold.fold_batch_norms`: the same outputs up to float rounding, one pass less
    over the activations, and none of the model's hooks). None (default): when it has batch norms to fold
    and no hooks.
    """
    was_training = model.training
    model.eval()
    if fold is None:
        fold = folds_for_evaluation(model)
    evaluated = fold_batch_norms(model) if fold else model
    logits, latents = [], []
    for start in range(0, len(x), batch_size):
        out = evaluated(x[start: start + batch_size].to(device=device, dtype=dtype))
        logits.append(out.logits.cpu())
        latents.append(out.latents.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(latents)


class Trainer:
    """Builds data, model, optimiser and schedules from a :class:`TrainConfig` and trains.

    Parameters
    ----------
    config : TrainConfig or mapping
        A mapping of TrainConfig keys is validated with ``backbone`` in place, so that its
        ``backbone_options`` are checked against that backbone's factory (a TrainConfig checks them
        against its own ``backbone``).
    dataset : Dataset, optional
        Use this dataset instead of ``load_dataset(config.dataset, **config.dataset_options)``.
    backbone : nn.Module, callable or str, optional
        Use this backbone instead of ``config.backbone``: a module (used as it is), a factory
        ``factory(input_shape, **config.backbone_options) -> nn.Module`` (called after seeding), or a
        name or import path ``package.module:factory``. Its ``out_dim`` is measured by one dry forward
        where it declares none. The run's ``config.json`` records the import path (a string, or a
        function or class importable under its own name), else ``<python object module.qualname>``:
        such a run is rebuilt only with the same backbone passed again.
    """

    def __init__(self, config: TrainConfig | Mapping[str, Any], *, dataset: Dataset | None = None,
                 backbone: nn.Module | Callable[..., nn.Module] | str | None = None):
        if isinstance(backbone, str):
            config, backbone = _with_backbone(config, backbone), None
        elif backbone is not None:
            config = _with_backbone(config, backbone_record(backbone))
        elif isinstance(config, Mapping):
            config = TrainConfig(**config)
        self.config = config
        self.device = select_device(config.device)
        check_batch_size(config.batch_size, launched_world_size())  # before joining the process group
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.out_dir = Path(config.out_dir)
        self.row = get_row(config.row)

        self.data = dataset if dataset is not None else load_dataset(config.dataset, **config.dataset_options)
        torch.manual_seed(config.seed)  # parameter initialisation; data order has its own generators
        model = model_from_config(config, self.data, backbone).to(device=self.device, dtype=self.dtype)
        self.model = model
        # The evaluations run on the folded copy unless the model came with hooks of its own (those of the
        # preconditioner below record statistics only in passes that build a graph, which evaluations do not).
        self._fold = folds_for_evaluation(model)
        base_optimizer, use_kfac = resolve_optimizer(config.optimizer, model)
        self.optimizer = build_optimizer(model, base_optimizer, lr=config.lr, weight_decay=config.weight_decay)
        self.preconditioner = None
        if use_kfac:
            from lpc_geom.optim.kfac import KFAC

            self.preconditioner = KFAC(model, fisher=config.kfac_fisher, damping=config.kfac_damping,
                                       update_freq=config.kfac_update_freq, factor_freq=config.kfac_factor_freq,
                                       lr=config.lr)
        self.ddp_model: nn.Module = model
        if self.dist.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.gamma = build_gamma_schedule(config.gamma_schedule, run_epochs=config.epochs, **config.gamma_options)
        # A schedule driven by validation accuracy gets a split held out of the training data (never the test data).
        self.validation: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.gamma.uses_validation:
            train_idx, val_idx = validation_split(self.data.y_train, self.gamma.validation_fraction, config.seed)
            self.validation = (self.data.x_train[val_idx], self.data.y_train[val_idx])
            self.data = dataclasses.replace(self.data, x_train=self.data.x_train[train_idx],
                                            y_train=self.data.y_train[train_idx])
        self.objective = Objective(self.row, supcon_weight=config.supcon_weight,
                                   temperature=config.temperature, epochs=config.epochs)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        # Collapse is a property of the training latents: follow it on a fixed seeded subsample each epoch.
        self.train_probe = torch.randperm(len(self.data.y_train), generator=torch.Generator().manual_seed(0))[
            :TRAIN_PROBE_SAMPLES]
        self.monitor = CollapseMonitor(manifold=getattr(self.model.head, "manifold", None))
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self._warned_origin = False
        self._partial: dict[str, Any] | None = None  # a resumed mid-epoch state (see state_dict)
        self._last_good: dict[str, Any] | None = None  # CPU copy of the state at the end of the last finite epoch
        self._signals = StopSignals(())

    # ----------------------------------------------------------------------------------- state
    def state_dict(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a resumption needs after epoch ``epoch`` (-1: before the first).

        ``partial`` describes a stop inside epoch ``epoch + 1``: ``{"epoch", "step"`` (batches done),
        ``"generator"`` (the epoch generator's state), ``"sums"`` (the epoch's running sums),
        ``"seconds"}``. Only tensors, numbers, strings, lists and dicts: it loads with ``weights_only``.
        """
        return {
            "epoch": epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "preconditioner": None if self.preconditioner is None else self.preconditioner.state_dict(),
            "gamma_schedule": self.gamma.state_dict(),
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "partial": partial,
        }

    def resume(self, from_last_good: bool = False) -> None:
        """Load ``checkpoint.pt`` (or ``checkpoint_last_good.pt``) from the run directory and continue from it.

        The config may differ from the checkpoint's only in :data:`~lpc_geom.train.run_dir.RESUMABLE_CHANGES`
        (from the last good state also in the learning rate), and ``epochs`` may not be fewer than the
        epochs the checkpoint has done.
        """
        name = LAST_GOOD if from_last_good else CHECKPOINT
        path = self.out_dir / name
        if not run_files(self.out_dir):
            raise FileNotFoundError(f"cannot resume {self.out_dir}: it holds no run; start one without --resume")
        if not path.is_file():
            what = "no divergence left one" if from_last_good else "it stopped before its first checkpoint"
            raise FileNotFoundError(f"cannot resume {self.out_dir}: no {name} there ({what}); "
                                    f"start again with --overwrite, or without --resume into another --out")
        state = load_checkpoint(path, map_location=self.device)
        missing = [k for k in ("epoch", "config", "model", "optimizer", "gamma_schedule", "history", "torch_rng")
                   if k not in state]
        if missing:
            raise ValueError(f"{path}: not an lpc_geom training checkpoint (missing {', '.join(missing)}); not loaded")
        allowed = LAST_GOOD_CHANGES if from_last_good else RESUMABLE_CHANGES
        differing = config_differences(state["config"], self.config.to_dict(), ignore=allowed)
        if differing:
            raise ValueError(
                f"cannot resume {self.out_dir}: the config differs from the checkpoint's in {differing}; "
                f"only {list(allowed)} may change on resume"
            )
        partial = state.get("partial")
        # epochs the checkpoint has done; a stop inside an epoch needs that epoch to be trained to its end
        done = state["epoch"] + 1 if partial is None else partial["epoch"] + 1
        if self.config.epochs < done:
            raise ValueError(
                f"cannot resume {self.out_dir}: {path.name} has trained {state['epoch'] + 1} epochs"
                f"{'' if partial is None else ' and part of the next'}; epochs={self.config.epochs} is fewer "
                f"(pass --epochs {done} or more)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.preconditioner is not None:
            self.preconditioner.load_state_dict(state["preconditioner"])
        self.gamma.load_state_dict(state["gamma_schedule"])
        self.history = list(state["history"])
        self.monitor.restore(self.history)
        torch.set_rng_state(state["torch_rng"].cpu())
        self._partial = partial
        self.start_epoch = state["epoch"] + 1

    def _save(self, epoch: int, name: str = CHECKPOINT, partial: dict[str, Any] | None = None) -> Path:
        path = self.out_dir / name
        if self.dist.is_main:
            save_checkpoint(self.state_dict(epoch, partial), path)
        return path

    def _keep_last_good(self, epoch: int) -> None:
        """Copy the state after epoch ``epoch`` (all finite) to CPU memory: the divergence fallback."""
        if self.dist.is_main:
            self._last_good = _cpu_copy(self.state_dict(epoch, self._partial))

    def _diverged(self, what: str, epoch: int, step: int, steps: int, gamma: float, lr: float,
                  detail: str = "") -> None:
        """Write ``checkpoint_last_good.pt`` and raise :class:`NonFiniteLossError`."""
        path = self.out_dir / LAST_GOOD
        if self.dist.is_main and self._last_good is not None:
            save_checkpoint(self._last_good, path)
        good = self._last_good or {"epoch": self.start_epoch - 1, "partial": None}
        if good["partial"] is not None:  # no epoch finished since a resumption inside an epoch
            state = f"epoch {good['partial']['epoch']}, step {good['partial']['step']}, where this training resumed"
        else:
            state = f"end of epoch {good['epoch']}" if good["epoch"] >= 0 else "the initial state"
        raise NonFiniteLossError(
            f"non-finite {what} at epoch {epoch}, step {step} of {steps} (optimizer={self.config.optimizer}, "
            f"gamma={gamma:.4g}, lr={lr:.4g}{'; ' + detail if detail else ''}). Last good state ({state}): "
            f"{path}; continue from it with a smaller learning rate (lpc-geom train ... --resume "
            f"--from-last-good --lr {self.config.lr / 10:.3g}), or start again with gamma growing more slowly "
            f"(e.g. --gamma-schedule threshold).", last_good=path)

    # ----------------------------------------------------------------------------------- training
    def _set_learning_rates(self, epoch: int) -> float:
        factor = lr_factor(epoch, halve_from=self.config.lr_halve_from, halve_every=self.config.lr_halve_every)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            keep = group.get("role") == "classifier" and not self.config.lr_halve_classifier
            group["lr"] = base if keep else base * factor
        if self.preconditioner is not None:
            self.preconditioner.lr = self.config.lr * factor  # its KL clipping assumes the current step size
            self.preconditioner.damping = self.kfac_damping_at(epoch)
        return self.config.lr * factor

    def kfac_damping_at(self, epoch: int) -> float:
        """K-FAC damping of an epoch: ``kfac_damping``, or ``kfac_damping_late`` once the learning rate decays.

        Why two values: a large damping keeps the steps close to the base optimiser's while gamma grows (which
        protects test accuracy); a small one in the decay phase lets the compression gradient act along the
        directions where the Fisher of the classifier is nearly flat, which is where the remaining
        within-class spread of the latents lies.
        """
        late = self.config.kfac_damping_late
        return self.config.kfac_damping if late is None or epoch < self.config.lr_halve_from else late

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived (on any rank: the ranks stop at the same step)."""
        flag = self._signals.received is not None
        if self.dist.enabled:
            flag = float(all_reduce_sum(torch.tensor([float(flag)], dtype=torch.float64), self.dist)[0]) > 0
        return flag

    def _stop(self, epoch: int, checkpoint: Path | None) -> None:
        signum = self._signals.received if self._signals.received is not None else signal.SIGTERM
        raise TrainingStopped(signum, epoch, checkpoint, self.out_dir)

    def _train_epoch(self, epoch: int, gamma: float, lr: float) -> dict[str, float]:
        cfg, data = self.config, self.data
        generator = _epoch_generator(cfg.seed, epoch)
        permutation = torch.randperm(len(data.y_train), generator=generator)
        min_batch = 2 * self.dist.world_size  # batch norm and SupCon need two samples per rank
        sums = torch.zeros(3 + 3, dtype=torch.float64)  # loss, correct, count, ce, compression, supcon
        batches = permutation.split(cfg.batch_size)
        first, seconds = 0, 0.0
        if self._partial is not None and self._partial["epoch"] == epoch:  # resumed inside this epoch
            first, seconds = self._partial["step"], self._partial["seconds"]
            generator.set_state(self._partial["generator"])
            if self.dist.is_main:  # the saved sums are over all ranks: one rank carries them on
                sums = self._partial["sums"].clone()
        self._partial = None
        start = time.perf_counter() - seconds
        self.ddp_model.train()
        preconditioner = self.preconditioner if epoch >= cfg.kfac_start_epoch else None
        for step in range(first, len(batches)):
            batch = batches[step]
            if len(batch) < min_batch:
                continue
            local = shard_batch(batch, self.dist)
            xb = data.x_train[local]
            if data.augment is not None:
                xb = data.augment(xb, generator)
            xb = xb.to(device=self.device, dtype=self.dtype)
            yb = data.y_train[local].to(self.device)
            out = self.ddp_model(xb)
            if preconditioner is not None:
                margin = self.objective.margin_at(epoch)
                # cosine heads: the Fisher of the softmax the loss actually uses, over scaled cosines
                preconditioner.update_statistics(out.logits if margin is None else margin[1] * out.logits, yb)
            loss, parts = self.objective(out, yb, gamma=gamma, epoch=epoch)
            if not torch.isfinite(loss):
                terms = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                self._diverged("loss", epoch, step, len(batches), gamma, lr, f"terms: {terms}")
            # Weight so that DDP's gradient average equals the mean over the global batch.
            weight = len(local) * self.dist.world_size / len(batch)
            (loss * weight).backward()
            if preconditioner is not None:
                preconditioner.step()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            n = len(local)
            with torch.no_grad():
                sums[0] += float(loss) * n
                sums[1] += float((out.logits.argmax(1) == yb).sum())
                sums[2] += n
                for i, key in enumerate(("ce", "compression", "supcon")):
                    if key in parts:
                        sums[3 + i] += float(parts[key]) * n
            if step + 1 < len(batches) and self._stop_requested():
                partial = {"epoch": epoch, "step": step + 1, "generator": generator.get_state(),
                           "sums": all_reduce_sum(sums.clone(), self.dist), "seconds": time.perf_counter() - start}
                self._stop(epoch, self._save(epoch - 1, partial=partial))
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._diverged("parameters", epoch, len(batches) - 1, len(batches), gamma, lr,
                           "after the epoch's last step")
        sums = all_reduce_sum(sums, self.dist)
        count = max(float(sums[2]), 1.0)
        return {
            "train_loss": float(sums[0]) / count,
            "train_acc": float(sums[1]) / count,
            "ce": float(sums[3]) / count,
            "compression": float(sums[4]) / count,
            "supcon": float(sums[5]) / count,
            "epoch_seconds": time.perf_counter() - start,
        }

    def _evaluate(self, epoch: int, gamma: float, lr: float) -> dict[str, float]:
        """Test accuracy and collapse figures of the test latents and of a fixed training subsample."""
        logits, latents = predict(self.model, self.data.x_test, self.device, self.dtype, fold=self._fold)
        _, train_latents = predict(self.model, self.data.x_train[self.train_probe], self.device, self.dtype,
                                   fold=self._fold)
        for split, values in (("test", latents), ("test logits", logits), ("training", train_latents)):
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                steps = math.ceil(len(self.data.y_train) / self.config.batch_size)
                self._diverged(f"{split} latents" if "logits" not in split else split, epoch, steps - 1, steps,
                               gamma, lr, f"{bad} of {values.numel()} entries, after the epoch's last step")
        y = self.data.y_test
        figures = {"test_acc": float((logits.argmax(1) == y).float().mean())}
        figures.update(self.monitor.record(epoch, latents, y))
        figures.update(self.monitor.record(epoch, train_latents, self.data.y_train[self.train_probe], prefix="train_"))
        return figures

    def _validate(self, epoch: int) -> dict[str, Any]:
        """Accuracy on the held-out validation split, passed to the gamma schedule, and its decision."""
        x_val, y_val = self.validation
        logits, _ = predict(self.model, x_val, self.device, self.dtype, fold=self._fold)
        accuracy = float((logits.argmax(1) == y_val).float().mean())
        decision = self.gamma.observe_validation(epoch, accuracy, samples=len(y_val))
        return {"val_acc": accuracy, "gamma_decision": decision, "gamma_tolerance": self.gamma.last_tolerance,
                "gamma_next": self.gamma(epoch + 1)}

    def _check_origin_collapse(self, row: dict[str, Any]) -> None:
        chance = 1.0 / self.data.num_classes
        # At chance *after* the classes had separated (or after gamma grew 100-fold): not a slow start.
        had_separated = any(r["train_acc"] >= chance + 0.25 * (1 - chance) for r in self.history)
        collapsed = (
            self.row.penalty and row["train_acc"] <= chance + 0.05 * (1 - chance)
            and row["gamma"] > self.gamma.start and (had_separated or row["gamma"] >= 100 * self.gamma.start)
        )
        row["collapsed_to_origin"] = bool(collapsed)
        if collapsed and not self._warned_origin:
            self._warned_origin = True
            warnings.warn(
                f"epoch {row['epoch']}: training accuracy {row['train_acc']:.3f} is at chance "
                f"({chance:.3f}) while gamma grows ({row['gamma']:.3g}): every class collapsed onto the "
                f"origin. Grow gamma later or slower (gamma_schedule='threshold', smaller factor).",
                CollapseToOriginWarning, stacklevel=3,
            )

    def fit(self, *, resume: bool = False, overwrite: bool = False, from_last_good: bool = False,
            stop_signals=STOP_SIGNALS, command: list[str] | None = None) -> RunResult:
        """Train for ``config.epochs`` epochs (continuing from the checkpoint when ``resume``).

        Parameters
        ----------
        resume : bool, default False
            Continue the run in ``out_dir`` from ``checkpoint.pt`` (same config but for
            :data:`~lpc_geom.train.run_dir.RESUMABLE_CHANGES`; ``epochs`` at least the checkpoint's).
        overwrite : bool, default False
            Delete the run that ``out_dir`` holds (every one of its files) and train anew. Without
            ``resume`` or ``overwrite`` a directory holding a run is refused
            (:class:`~lpc_geom.train.run_dir.RunExistsError`).
        from_last_good : bool, default False
            With ``resume``: continue from ``checkpoint_last_good.pt`` (left by a divergence), where the
            learning rate may also differ.
        stop_signals : sequence of signal numbers, default (SIGINT, SIGTERM)
            Signals that stop the training at the next step boundary with a checkpoint and raise
            :class:`TrainingStopped` (handled in the main thread only; the previous handlers come back
            afterwards). ``()``: leave signal handling alone.
        command : list of str, optional
            The command line that started the training, recorded in the manifest ``run.json``.

        Raises
        ------
        TrainingStopped
            A stop signal arrived; the checkpoint is written and the manifest says ``stopped``.
        NonFiniteLossError
            The training diverged; ``checkpoint_last_good.pt`` is written, the manifest says ``failed``.
        RunInUseError, RunExistsError
            Another training writes ``out_dir``, or it holds another run.
        """
        cfg = self.config
        if from_last_good and not resume:
            raise ValueError("from_last_good continues a run: pass resume=True (--resume --from-last-good)")
        writer = RunWriter(self.out_dir, cfg.to_dict(), command=command) if self.dist.is_main else None
        if writer is not None:
            writer.open(resume=resume, overwrite=overwrite)
        bar, started = None, False  # started: the manifest says running (a refused resumption leaves it alone)
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            with StopSignals(stop_signals) as self._signals:
                if resume:
                    self.resume(from_last_good)
                if writer is not None:
                    write_json(cfg.to_dict(), self.out_dir / CONFIG)
                    writer.update(epochs_done=self.start_epoch,
                                  resumed_from=({"file": LAST_GOOD if from_last_good else CHECKPOINT,
                                                 "epochs_done": self.start_epoch} if resume else None))
                    started = True
                bar = tqdm(range(self.start_epoch, cfg.epochs), initial=self.start_epoch, total=cfg.epochs,
                           desc=f"{cfg.row} {cfg.geometry}", disable=not (cfg.progress and self.dist.is_main),
                           dynamic_ncols=True)
                if self.device.type == "cpu":  # restored afterwards: a library call must not change global state
                    torch.use_deterministic_algorithms(True)
                self._keep_last_good(self.start_epoch - 1)
                for epoch in bar:
                    gamma = self.gamma(epoch)
                    lr = self._set_learning_rates(epoch)
                    row: dict[str, Any] = {"epoch": epoch, "gamma": gamma, "lr": lr}
                    row.update(self._train_epoch(epoch, gamma, lr))
                    self.gamma.observe(epoch, row["train_acc"])
                    if self.validation is not None:
                        row.update(self._validate(epoch))
                    row.update(self._evaluate(epoch, gamma, lr))
                    self._check_origin_collapse(row)
                    self.history.append(row)
                    self._keep_last_good(epoch)
                    bar.set_postfix(loss=f"{row['train_loss']:.3g}", acc=f"{row['test_acc']:.3f}",
                                    gamma=f"{gamma:.3g}")
                    last = epoch == cfg.epochs - 1
                    saved = (epoch + 1) % cfg.checkpoint_every == 0 or last
                    if saved:
                        self._save(epoch)
                    if self.dist.is_main:  # progress; fsynced only with a checkpoint, their durable copy
                        write_history(self.history, self.out_dir, durable=saved)
                        writer.update(epochs_done=epoch + 1, durable=saved)
                    if not last and self._stop_requested():
                        self._stop(epoch + 1, self._save(epoch) if not saved else self.out_dir / CHECKPOINT)
                final = self._finish()
            if writer is not None:
                writer.update(status="finished", epochs_done=cfg.epochs)
        except TrainingStopped as exc:
            if exc.epoch is None:  # a second signal: stopped at once, inside some step
                exc.epoch, exc.out_dir = len(self.history), self.out_dir
            if writer is not None and started:
                writer.update(status="stopped", stopped_by=signal.Signals(exc.signum).name)
            raise
        except BaseException as exc:
            if writer is not None and started:
                writer.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            torch.use_deterministic_algorithms(deterministic)
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
            cleanup(self.dist)
        return RunResult(self.out_dir, self.history, final, self.model)

    def _finish(self) -> dict[str, Any]:
        """Write the final latents (train and test) and the summary; returns the summary."""
        train_logits, train_latents = predict(self.model, self.data.x_train, self.device, self.dtype,
                                               fold=self._fold)
        test_logits, test_latents = predict(self.model, self.data.x_test, self.device, self.dtype, fold=self._fold)
        classifier = self.model.head.classifier
        final = dict(self.history[-1]) if self.history else {}
        final["train_acc_eval"] = float((train_logits.argmax(1) == self.data.y_train).float().mean())
        if self.validation is not None:
            final.update(validation_fraction=self.gamma.validation_fraction,
                         validation_samples=len(self.validation[1]), validation_seed=self.config.seed,
                         train_samples=len(self.data.y_train))
        if self.dist.is_main:
            arrays = {
                "train_latents": train_latents.numpy(), "train_labels": self.data.y_train.numpy(),
                "train_predictions": train_logits.argmax(1).numpy(), "train_logits": train_logits.numpy(),
                "test_latents": test_latents.numpy(), "test_labels": self.data.y_test.numpy(),
                "test_predictions": test_logits.argmax(1).numpy(), "test_logits": test_logits.numpy(),
            }
            weight = getattr(classifier, "weight", None)
            if isinstance(weight, torch.Tensor):
                arrays["classifier_weight"] = weight.detach().cpu().numpy()
                bias = getattr(classifier, "bias", None)
                if isinstance(bias, torch.Tensor):
                    arrays["classifier_bias"] = bias.detach().cpu().numpy()
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            write_bytes(buffer.getvalue(), self.out_dir / LATENTS)
            if self.config.final_robustness_samples > 0:
                from lpc_geom.analysis.robustness import robustness_of, write_robustness_json

                report = robustness_of(self.model, self.data, samples=self.config.final_robustness_samples)
                write_robustness_json(report, self.out_dir / ROBUSTNESS_FILES["test"],
                                      source=stamp({}, self.out_dir, CHECKPOINT)["source"])
                final.update({f"robust_{key}": value for key, value in report.items()})
            write_json(final, self.out_dir / SUMMARY)
        return final


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)``: a stratified split of the training labels, a function of ``seed`` alone.

    Each class sends ``round(n_c * fraction)`` of its samples (at least one, at most ``n_c - 1``) to the
    validation split (:func:`~lpc_geom.data.stratified_split`), so that a resumed run holds out the same
    samples. Raises a ValueError when a class has fewer than two training samples.
    """
    train_idx, val_idx = stratified_split(labels.cpu().numpy(), fraction, np.random.default_rng(seed))
    return torch.from_numpy(train_idx), torch.from_numpy(val_idx)


def train(config: TrainConfig | Mapping[str, Any], *, resume: bool = False, dataset: Dataset | None = None,
          backbone: nn.Module | Callable[..., nn.Module] | str | None = None, **fit_options) -> RunResult:
    """Train one run described by ``config``; see :class:`Trainer` (``dataset``, ``backbone``: your own
    data and network) and :meth:`Trainer.fit` (``overwrite``, ``from_last_good``, ``stop_signals``,
    ``command``)."""
    return Trainer(config, dataset=dataset, backbone=backbone).fit(resume=resume, **fit_options)


def _cpu_copy(obj: Any) -> Any:
    """A deep copy of a state (nested dicts / lists of tensors and plain values) with tensors on CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(value) for value in obj)
    return obj
