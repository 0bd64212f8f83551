"""Schedules for the compression strength gamma and for the learning rate.

Every gamma schedule maps an epoch to ``gamma`` and may observe the training accuracy at the end of
each epoch (only :class:`ThresholdGamma` uses it). :class:`AdaptiveGamma` instead observes the accuracy
on a validation split the trainer holds out of the training data (schedules whose ``uses_validation``
is true). Schedules are plain data: their state round-trips through ``state_dict`` so that a resumed run
reproduces an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar


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
    #: Whether the trainer holds out ``validation_fraction`` of the training data for :meth:`observe_validation`.
    uses_validation: ClassVar[bool] = False

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


#: Decisions :class:`AdaptiveGamma` records in the history (``gamma_decision``).
GROW, HOLD, BACK_OFF = "grow", "hold", "back off"
#: Standard errors of the validation accuracy within which :class:`AdaptiveGamma` counts an epoch as
#: holding the best accuracy (:math:`z` of its tolerance).
NOISE_SIGMAS = 2.0


@dataclass
class AdaptiveGamma(ExponentialGamma):
    r"""Gamma grown while a held-out validation accuracy holds, backed off when it drops.

    The trainer holds out ``validation_fraction`` of the training data (stratified, seeded by the run's
    seed) and, at the end of every epoch ``e``, passes its accuracy :math:`a_e` on the :math:`n` held-out
    samples to :meth:`observe_validation`, which sets the gamma of the next epoch. With :math:`b_e =
    \max_{e' \le e} a_{e'}` the best validation accuracy so far, the tolerance of epoch ``e`` is

    .. math::

        \tau_e = \max\left(\tau_{min},\; z \sqrt{\frac{b_e (1 - b_e)}{n}}\right), \qquad z = 2,

    with :math:`\tau_{min}` the ``tolerance`` option (a floor the user sets) and :math:`z` =
    :data:`NOISE_SIGMAS`. The trainer also passes the epoch's training accuracy :math:`t_e` to
    :meth:`observe` (before the validation accuracy); with :math:`c_e = \max_{e' \le e} t_{e'}`, an
    epoch *holds* when :math:`a_e \ge b_e - \tau_e` and :math:`t_e \ge c_e - \tau_{min}` (a schedule
    never given a training accuracy checks the first condition alone). Then:

    * **grow**: while the epoch holds (and growth has not stopped), the current gamma is recorded as
      the last good one, :math:`\gamma_{good} \leftarrow \gamma`, and every ``every`` epochs
      :math:`\gamma \leftarrow \min(f \gamma, \gamma_{max})`;
    * **hold**: gamma stays, either because growth stopped, or because fewer than ``patience``
      consecutive epochs failed to hold (a dip that short is within the epoch-to-epoch noise), or
      because the epoch is not a multiple of ``every``;
    * **back off**: after ``patience`` consecutive epochs that do not hold,
      :math:`\gamma \leftarrow \gamma_{good}` and growth stops for the rest of the run.

    Why: the compression term trades the classifier's accuracy for collapse, and on a new dataset the
    gamma at which the trade starts costing accuracy is unknown (the paper's schedules grow to
    :math:`10^6` whatever the data; on some problems accuracy falls well before). Growth is kept as
    long as it is free on data the optimiser does not fit; the first sustained loss of accuracy marks the
    largest gamma worth having, and returning to the last gamma that was free keeps both the collapse
    reached there and the accuracy. Growth does not resume afterwards: the accuracy at a larger gamma was
    just measured to be lower, and alternating would make gamma oscillate.

    Why the tolerance grows with the noise: the validation accuracy is a mean of :math:`n` Bernoulli
    outcomes, so at a true accuracy :math:`p` its standard error is :math:`\sqrt{p (1 - p) / n}`
    (estimated at :math:`p = b_e`). A fixed tolerance smaller than that (one point, against about 2.5
    points for :math:`n = 240` at :math:`p = 0.8`) reads sampling noise as a loss of accuracy and stops
    growth early, leaving little collapse. :math:`z = 2` standard errors makes a single epoch of pure
    noise fall below the tolerance with probability about 2 %, and two in a row (``patience = 2``) far
    less. The best so far is itself the maximum of noisy values and sits above the true accuracy, so the
    rule still backs off on a loss of about :math:`\tau_e` or more; a larger validation split
    (``validation_fraction``) makes it finer. With ``samples=None`` (the accuracy is exact) the tolerance
    is the floor alone.

    Why the training accuracy too: a gamma that grows faster than the network fits makes the penalty
    undo the fit, which shows first in the accuracy on the data being fitted; the validation accuracy,
    noisier by :math:`\sqrt{(1 - v) / v}` (3x for ``validation_fraction`` :math:`v = 0.1`), may stay within
    its wider tolerance meanwhile, while gamma keeps growing. The training accuracy is averaged over every
    training sample of the epoch, so the floor alone is its tolerance: a sustained fall of a point means
    the penalty, not the sample, is costing accuracy.

    State (``state_dict``): ``gamma``, ``good_gamma``, ``best``, ``below`` (consecutive epochs that did not
    hold), ``stopped``, ``observed`` (validation observations so far), ``last_tolerance`` (:math:`\tau_e`
    of the latest observation, recorded in the history beside the decision), ``train_accuracy``
    (:math:`t_e`, the latest training accuracy) and ``best_train`` (:math:`c_e`).
    ``__call__`` returns the current gamma whatever the epoch: the schedule is driven by its observations.
    """

    tolerance: float = 0.01
    patience: int = 2
    validation_fraction: float = 0.1
    gamma: float | None = None
    good_gamma: float | None = None
    best: float | None = None
    below: int = 0
    stopped: bool = False
    observed: int = 0
    last_tolerance: float | None = None
    train_accuracy: float | None = None
    best_train: float | None = None
    uses_validation: ClassVar[bool] = True
    #: Fields that hold the controller's state, not options.
    STATE: ClassVar[tuple[str, ...]] = ("gamma", "good_gamma", "best", "below", "stopped", "observed",
                                        "last_tolerance", "train_accuracy", "best_train")

    def __call__(self, epoch: int) -> float:
        return self.start if self.gamma is None else self.gamma

    def observe(self, epoch: int, train_accuracy: float) -> None:
        """Take the training accuracy of epoch ``epoch``, checked by the next :meth:`observe_validation`.

        Raises
        ------
        ValueError
            If ``train_accuracy`` is not a finite fraction in [0, 1].
        """
        if not math.isfinite(train_accuracy) or not 0.0 <= train_accuracy <= 1.0:
            raise ValueError(f"training accuracy must be a fraction in [0, 1], got {train_accuracy!r}")
        self.train_accuracy = float(train_accuracy)
        self.best_train = self.train_accuracy if self.best_train is None else max(self.best_train,
                                                                                 self.train_accuracy)

    def tolerance_for(self, best: float, samples: int | None) -> float:
        r"""The tolerance :math:`\tau = \max(\tau_{min}, z \sqrt{b (1 - b) / n})` (see the class docstring).

        Parameters
        ----------
        best : float
            The best validation accuracy so far, :math:`b`.
        samples : int or None
            The validation size :math:`n`; ``None``: an exact accuracy, the floor :math:`\tau_{min}` alone.

        Returns
        -------
        float
        """
        if samples is None:
            return self.tolerance
        return max(self.tolerance, NOISE_SIGMAS * math.sqrt(best * (1.0 - best) / samples))

    def observe_validation(self, epoch: int, accuracy: float, samples: int | None = None) -> str:
        """Take the validation accuracy after epoch ``epoch``, set the next epoch's gamma, return the decision.

        Parameters
        ----------
        epoch : int
            The epoch just trained.
        accuracy : float
            Its accuracy on the validation split, a fraction in [0, 1].
        samples : int or None, optional
            Size :math:`n` of the validation split, which sets the noise part of the tolerance (see the
            class docstring); ``None``: the accuracy is exact and the tolerance is the ``tolerance`` floor.

        Returns
        -------
        str
            :data:`GROW`, :data:`HOLD` or :data:`BACK_OFF` (see the class docstring); the tolerance it
            was decided with is :attr:`last_tolerance`.

        Raises
        ------
        ValueError
            If ``accuracy`` is not a finite fraction in [0, 1] or ``samples`` is not a positive integer.
        """
        if not math.isfinite(accuracy) or not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"validation accuracy must be a fraction in [0, 1], got {accuracy!r}")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"validation samples must be a positive integer or None, got {samples!r}")
        gamma = self(epoch)
        self.observed += 1
        self.best = accuracy if self.best is None else max(self.best, accuracy)
        self.last_tolerance = self.tolerance_for(self.best, samples)
        fit_holds = self.train_accuracy is None or self.train_accuracy >= self.best_train - self.tolerance
        if accuracy >= self.best - self.last_tolerance and fit_holds:
            self.below = 0
            if self.stopped:
                return HOLD
            self.good_gamma = gamma
            if self.observed % self.every == 0 and gamma < self.gamma_max:
                self.gamma = min(gamma * self.factor, self.gamma_max)
                return GROW
            return HOLD
        self.below += 1
        if self.stopped or self.below < self.patience:
            return HOLD
        self.stopped = True
        self.gamma = self.start if self.good_gamma is None else self.good_gamma
        return BACK_OFF


GAMMA_SCHEDULES = {
    "exponential": ExponentialGamma,
    "two-regime": TwoRegimeGamma,
    "threshold": ThresholdGamma,
    "constant": ConstantGamma,
    "adaptive": AdaptiveGamma,
}


def gamma_option_names(cls: type) -> list[str]:
    """The options of a gamma schedule class: its dataclass fields less those that hold its state."""
    state = ("started_at", *getattr(cls, "STATE", ()))
    return [f.name for f in fields(cls) if f.name not in state]  # fields() leaves the ClassVars out


def build_gamma_schedule(kind: str, **options) -> ExponentialGamma:
    """Build a gamma schedule by name; the error lists accepted names and options."""
    if kind not in GAMMA_SCHEDULES:
        raise ValueError(f"unknown gamma schedule {kind!r}; accepted: {', '.join(GAMMA_SCHEDULES)}")
    cls = GAMMA_SCHEDULES[kind]
    accepted = gamma_option_names(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for gamma schedule {kind!r}; accepted: {accepted}")
    schedule = cls(**options)
    if schedule.start <= 0 or schedule.gamma_max < schedule.start or schedule.every < 1:
        raise ValueError(
            f"gamma schedule {kind!r} needs 0 < start <= gamma_max and every >= 1, got {schedule}"
        )
    if isinstance(schedule, AdaptiveGamma) and not (
            0.0 < schedule.validation_fraction < 1.0 and 0.0 <= schedule.tolerance < 1.0 and schedule.patience >= 1):
        raise ValueError(f"gamma schedule {kind!r} needs 0 < validation_fraction < 1, 0 <= tolerance < 1 and "
                         f"patience >= 1, got validation_fraction={schedule.validation_fraction}, "
                         f"tolerance={schedule.tolerance}, patience={schedule.patience}")
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
