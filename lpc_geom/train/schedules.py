"""Schedules for the compression strength gamma and for the learning rate.

Every gamma schedule maps an epoch to ``gamma`` and may observe the training accuracy at the end of
each epoch (only :class:`ThresholdGamma` uses it). Schedules are plain data: their state round-trips
through ``state_dict`` so that a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class ExponentialGamma:
    r"""The paper's schedule: :math:`\gamma_e = \min(\gamma_0 f^{\lfloor e / s \rfloor}, \gamma_{max})`.

    Paper defaults: :math:`\gamma_0 = 10^{-2}`, :math:`f = 1.05` per epoch (``every = 1``),
    :math:`\gamma_{max} = 10^6`.
    """

    start: float = 1e-2
    factor: float = 1.05
    gamma_max: float = 1e6
    every: int = 1

    def __call__(self, epoch: int) -> float:
        return min(self.start * self.factor ** (epoch // self.every), self.gamma_max)

    def observe(self, epoch: int, train_accuracy: float) -> None:
        """No-op: this schedule does not depend on the training accuracy."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TwoRegimeGamma(ExponentialGamma):
    r"""The authors' two-regime schedule: fast growth up to ``switch``, then slower growth.

    :math:`\gamma` is multiplied by ``factor`` every ``every`` epochs until it reaches ``switch``, then by
    ``late_factor`` every ``every`` epochs until ``gamma_max``. Defaults: x2 every 5 epochs up to
    :math:`10^3`, then x1.25 every 5 epochs up to :math:`10^6`.
    """

    factor: float = 2.0
    every: int = 5
    switch: float = 1e3
    late_factor: float = 1.25

    def __call__(self, epoch: int) -> float:
        step = epoch // self.every
        early_steps = max(0, math.ceil(math.log(self.switch / self.start) / math.log(self.factor)))
        if step <= early_steps:
            return min(self.start * self.factor**step, self.switch, self.gamma_max)
        return min(self.switch * self.late_factor ** (step - early_steps), self.gamma_max)


@dataclass
class ThresholdGamma(ExponentialGamma):
    r"""Exponential growth that starts only once the training accuracy reaches ``threshold``.

    Growing gamma before the classes separate collapses every class onto the origin (accuracy at
    chance). Until the first epoch ``e_0`` whose training accuracy is at least ``threshold``,
    :math:`\gamma = \gamma_0`; afterwards :math:`\gamma_e = \min(\gamma_0 f^{\lfloor (e - e_0) / s \rfloor},
    \gamma_{max})`.
    """

    threshold: float = 0.99
    started_at: int | None = None

    def __call__(self, epoch: int) -> float:
        if self.started_at is None or epoch <= self.started_at:
            return self.start
        return min(self.start * self.factor ** ((epoch - self.started_at) // self.every), self.gamma_max)

    def observe(self, epoch: int, train_accuracy: float) -> None:
        if self.started_at is None and train_accuracy >= self.threshold:
            self.started_at = epoch


@dataclass
class ConstantGamma(ExponentialGamma):
    """A fixed gamma (``start``) for every epoch."""

    factor: float = 1.0

    def __call__(self, epoch: int) -> float:
        return self.start


GAMMA_SCHEDULES = {
    "exponential": ExponentialGamma,
    "two-regime": TwoRegimeGamma,
    "threshold": ThresholdGamma,
    "constant": ConstantGamma,
}


def build_gamma_schedule(kind: str, **options) -> ExponentialGamma:
    """Build a gamma schedule by name; the error lists accepted names and options."""
    if kind not in GAMMA_SCHEDULES:
        raise ValueError(f"unknown gamma schedule {kind!r}; accepted: {', '.join(GAMMA_SCHEDULES)}")
    cls = GAMMA_SCHEDULES[kind]
    accepted = [f for f in cls.__dataclass_fields__ if f != "started_at"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for gamma schedule {kind!r}; accepted: {accepted}")
    schedule = cls(**options)
    if schedule.start <= 0 or schedule.gamma_max < schedule.start or schedule.every < 1:
        raise ValueError(
            f"gamma schedule {kind!r} needs 0 < start <= gamma_max and every >= 1, got {schedule}"
        )
    return schedule


def lr_factor(epoch: int, *, halve_from: int, halve_every: int) -> float:
    r"""Learning-rate multiplier: halved every ``halve_every`` epochs from ``halve_from`` on.

    :math:`\eta_e = \eta_0 \, 2^{-n}`, :math:`n = 0` for :math:`e < e_h` and
    :math:`n = 1 + \lfloor (e - e_h) / s \rfloor` afterwards (paper: :math:`e_h = 250`, :math:`s = 50`).
    The trainer applies it to every parameter group except the classifier's.
    """
    if epoch < halve_from:
        return 1.0
    return 0.5 ** (1 + (epoch - halve_from) // halve_every)
