"""Schedules for the compression strength gamma and for the learning rate.

Every gamma schedule maps an epoch to ``gamma`` and may observe the training accuracy at the end of
each epoch (:class:`ThresholdGamma` and the warm-up of :class:`AdaptiveGamma` use it).
:class:`AdaptiveGamma` also observes the accuracy on a validation split the trainer holds out of the
training data (schedules whose ``uses_validation`` is true). Schedules are plain data: their state
round-trips through ``state_dict`` so that a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
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
WARM_UP, GROW, HOLD, BACK_OFF, RESUME = "warm-up", "grow", "hold", "back off", "resume"
#: Standard deviations of the smoothed validation accuracy within which :class:`AdaptiveGamma` counts an
#: epoch as holding the best smoothed accuracy (:math:`z` of its tolerance).
NOISE_SIGMAS = 2.0
#: Back-offs after growth (overshoots) after which :class:`AdaptiveGamma` stops growing (its step is then
#: :math:`f_0^{1/8}`).
SETTLE_BACK_OFFS = 3
#: The paper's growth, which :class:`AdaptiveGamma` stretches to the run's length: x1.05 per epoch over
#: 200 epochs.
PAPER_FACTOR, PAPER_EPOCHS = 1.05, 200
#: Phases of :class:`AdaptiveGamma` (its ``phase`` state).
WARMING, GROWING, COOLING, HOLDING = "warming", "growing", "cooling", "holding"


@dataclass
class AdaptiveGamma(ExponentialGamma):
    r"""Gamma held while the network fits, grown while a smoothed validation accuracy holds, backed off
    with a shrinking step when it drops, then held for the rest of the run.

    The trainer holds out ``validation_fraction`` of the training data (stratified, seeded by the run's
    seed) and, at the end of every epoch ``e`` (0-based) of an :math:`E`-epoch run, passes its accuracy
    :math:`a_e` on the :math:`n` held-out samples to :meth:`observe_validation`, which sets the gamma of
    the next epoch. The rule judges the exponentially smoothed accuracy and its best so far,

    .. math::

        s_e = s_{e-1} + \alpha (a_e - s_{e-1}), \quad s_0 = a_0, \qquad r_e = \max_{e_w \le e' \le e} s_{e'},

    with :math:`\alpha` = ``smoothing`` and :math:`e_w` the epoch that ended the warm-up (below); an epoch
    *holds* when :math:`s_e \ge r_e - \tau_e`, with the tolerance

    .. math::

        \tau_e = \max\left(\tau_{min},\; \min(\sigma_B, \sigma_M)\right), \qquad
        \sigma_B = z \sqrt{\frac{r_e (1 - r_e)}{n}} \sqrt{\frac{\alpha}{2 - \alpha}}, \qquad
        \sigma_M = z \sqrt{\frac{\alpha}{2} v_e}, \qquad z = 2,

    :math:`\tau_{min}` the ``tolerance`` option, :math:`z` = :data:`NOISE_SIGMAS` and :math:`v_e` the sample
    variance of the last :math:`W = \max(3, \lceil E / 10 \rceil)` innovations
    :math:`d_{e'} = a_{e'} - s_{e'-1}` (:math:`\sigma_M` only once :math:`W` of them exist). The run's length
    :math:`E` (``run_epochs``, set by the trainer through :func:`build_gamma_schedule`) fixes the windows:
    growth ends after :math:`E_g = \lceil g E \rceil` epochs (:math:`g` = ``grow_until``), so that gamma is
    held for the remaining :math:`E - E_g`, and the initial step is the paper's rate stretched to the
    run's length, :math:`f_0 = 1.05^{200 / E}` (``factor`` overrides it): growing all the way through the
    window, gamma would rise by :math:`1.05^{200 g}`, two decades for :math:`g = 1/2`. Phases and
    decisions:

    * **warm-up** (:data:`WARM_UP`): :math:`\gamma = \gamma_0` (``start``) until the fit plateaus:
      :math:`w = \max(p, \lceil E / 20 \rceil)` consecutive epochs (:math:`p` = ``patience``) in which the
      training accuracy :math:`t_e` (passed to :meth:`observe`; the smoothed validation accuracy for an
      epoch without one) did not rise by more than :math:`\tau_{min}` over the level it last rose to, or at
      the latest after :math:`\lceil E_g / 2 \rceil` epochs. The epoch :math:`e_w` that ends the warm-up
      grows, and the best starts there, at the level the fit reached: :math:`r_{e_w} = s_{e_w}`;
    * **grow** (:data:`GROW`): while an epoch holds, gamma is multiplied by the current step :math:`f_k`
      (every ``every`` observations), up to ``gamma_max``. The last good gamma :math:`\gamma_{good}` is the
      smallest gamma of the last :math:`L + 1` epochs, :math:`L = \lceil (1 - \alpha) / \alpha \rceil` the
      smoothing's delay: :math:`s_e` still carries the accuracy of the gammas of the epochs before;
    * **hold** (:data:`HOLD`): gamma stays: fewer than ``patience`` consecutive epochs failed to hold, or
      the run is past :math:`E_g`, or growth has settled, or a back-off is cooling down;
    * **back off** (:data:`BACK_OFF`): after ``patience`` consecutive epochs that do not hold, and if
      gamma grew since the last back-off (an overshoot), :math:`\gamma \leftarrow \gamma_{good}` and the
      step shrinks to :math:`f_{k+1} = \sqrt{f_k}`; otherwise (the accuracy fell at a gamma that did not
      grow, or did not recover after a back-off) :math:`\gamma \leftarrow \max(\gamma / f_0^{2^j},
      \gamma_{min})` with the same step, :math:`j` the number of such back-offs since an epoch last held
      and :math:`\gamma_{min} = \gamma_0 / f_0^{E_g}` (:meth:`gamma_floor`): below :math:`\gamma_0` if
      need be. At :math:`\gamma_{min}` a fall does not back off: the best resets to :math:`s_e` and gamma
      holds. Gamma is then held for :math:`L + 1` epochs (the cool-down), in which the smoothed accuracy
      forgets the epochs at the larger gamma;
    * **resume** (:data:`RESUME`): after the cool-down, an epoch that holds grows again with the smaller
      step, unless the run is past :math:`E_g` or :data:`SETTLE_BACK_OFFS` overshoots have happened
      (gamma then holds); one that does not counts towards the next back-off.

    Back-offs stay possible in every phase after the warm-up, so that an accuracy that falls while gamma
    is held (collapse costs accuracy slowly, and on some data at any gamma) is answered too.

    Why a fall that persists halves gamma ever faster: once the network fits its training data the
    cross-entropy's gradient vanishes and the compression term alone reshapes the latents, so that at a
    fixed gamma (even :math:`\gamma_0`, on small noisy data) the cost in accuracy grows with the epochs
    trained rather than with gamma; a back-off by one small step then only slows the loss. A fall that
    persists after a back-off says the gamma the data bear lies an unknown distance below: doubling the
    back-off in :math:`\log \gamma` reaches it in a number of back-offs logarithmic in that distance, the
    counterpart of the line search's halving steps above. The floor mirrors the growth window's range below
    :math:`\gamma_0`; there the penalty is negligible and a best that is not regained is no longer
    gamma's doing (an overfitting network, or a best inflated by noise), so the level reached is the new
    reference.

    Why: the compression term trades the classifier's accuracy for collapse, and on a new dataset the
    gamma at which the trade starts costing accuracy is unknown (the paper's schedules grow to
    :math:`10^6` whatever the data; on some problems accuracy falls well before). Growth is kept while it
    is free on data the optimiser does not fit. Four parts make the search settle without tuning:

    * *the warm-up*: while the network still fits, its validation accuracy rises and dips from epoch to
      epoch whatever gamma does; a dip read as a loss stops growth at a gamma that is no answer. The
      training accuracy, a mean over every training sample, tells the end of the fit far better than a
      small validation split. Once the training data are fitted the validation accuracy often falls for a
      while, with or without a penalty (the network overfits); judging growth against a peak reached
      before that would blame gamma for it, hence the reset;
    * *smoothing*: one epoch's accuracy on a small split moves by points; the smoothed accuracy averages
      about :math:`(2 - \alpha) / \alpha` epochs, and its best :math:`r_e` is much less inflated by noise
      than the best single epoch;
    * *a line search*: the first loss of accuracy brackets the gamma worth having between the last good
      gamma and the current one; returning to the good one and growing on with :math:`\sqrt{f_k}` probes
      the bracket with steps that halve in :math:`\log \gamma`, and settles after
      :data:`SETTLE_BACK_OFFS` overshoots instead of oscillating between two gammas;
    * *the held window*: collapse is a slow process at a fixed gamma (the latents contract epoch after
      epoch under a moderate penalty), not the effect of a large gamma, so the second part of the run,
      :math:`E - E_g` epochs, keeps the gamma found; growth rates and windows scale with :math:`E`, so the
      rule means the same for a 50- and a 500-epoch run.

    Why the tolerance grows with the noise, and why measured: the validation accuracy is a mean of
    :math:`n` Bernoulli outcomes, whose standard error at a true accuracy :math:`p` is at most
    :math:`\sqrt{p (1 - p) / n}` (estimated at :math:`p = r_e`); the smoothing scales the standard
    deviation of independent fluctuations by :math:`\sqrt{\alpha / (2 - \alpha)}`. That bound describes
    drawing the split; but :math:`s_e` and :math:`r_e` are measured on the same split, so what separates
    them is how much the predictions on those samples change from epoch to epoch, usually far less (a
    network that has fitted its data changes few predictions per epoch). It is measured: for independent
    fluctuations of variance :math:`\sigma^2` about a level, the innovation has variance
    :math:`2 \sigma^2 / (2 - \alpha)` and :math:`s_e` has :math:`\alpha \sigma^2 / (2 - \alpha)`, hence
    :math:`\mathrm{Var}(s_e) = \frac{\alpha}{2} \mathrm{Var}(d)`; the variance about the innovations' mean
    leaves a steady trend out, so that a slow decline does not widen its own tolerance. The binomial
    bound caps the measured term (and stands in for it while fewer than :math:`W` innovations exist).
    Within :math:`z = 2` of those a fall is noise. With ``samples=None`` (the accuracy is exact) the
    tolerance is the floor alone.

    The training accuracy (:meth:`observe`) only ends the warm-up; it is not judged afterwards: the
    penalty lowers it on samples the network had memorised (label noise), which costs nothing on new data.

    State (``state_dict``): ``run_epochs``; ``gamma``; ``step`` (:math:`f_k`); ``phase`` (one of
    :data:`WARMING`, :data:`GROWING`, :data:`COOLING`, :data:`HOLDING`); ``smoothed`` (:math:`s_e`);
    ``best`` (:math:`r_e`); ``plateau`` and ``flat`` (the warm-up's level and the epochs since it rose);
    ``below`` (consecutive epochs that did not hold); ``wait`` (cool-down epochs left); ``back_offs``;
    ``brackets`` (the overshoots among them); ``grew`` (whether gamma grew since the last back-off);
    ``recent`` (the gammas of the last :math:`L + 1` epochs); ``good_gamma``; ``observed`` (observations
    so far); ``last_tolerance`` (:math:`\tau_e` of the latest observation, recorded in the
    history beside the decision); ``train_accuracy`` (the epoch's :math:`t_e` until it is used);
    ``innovations`` (the last :math:`W` innovations); ``falls`` (:math:`j`).
    ``__call__`` returns the current gamma whatever the epoch: the schedule is driven by its observations.
    """

    factor: float | None = None
    tolerance: float = 0.01
    patience: int = 2
    validation_fraction: float = 0.1
    smoothing: float = 0.3
    grow_until: float = 0.5
    run_epochs: int | None = None
    gamma: float | None = None
    step: float | None = None
    phase: str = WARMING
    smoothed: float | None = None
    best: float | None = None
    plateau: float | None = None
    flat: int = 0
    below: int = 0
    wait: int = 0
    back_offs: int = 0
    brackets: int = 0
    grew: bool = False
    recent: list[float] = field(default_factory=list)
    good_gamma: float | None = None
    observed: int = 0
    last_tolerance: float | None = None
    train_accuracy: float | None = None
    innovations: list[float] = field(default_factory=list)
    falls: int = 0
    uses_validation: ClassVar[bool] = True
    #: Fields that hold the controller's state, not options.
    STATE: ClassVar[tuple[str, ...]] = ("run_epochs", "gamma", "step", "phase", "smoothed", "best", "plateau",
                                        "flat", "below", "wait", "back_offs", "brackets", "grew", "recent",
                                        "good_gamma", "observed", "last_tolerance", "train_accuracy",
                                        "innovations", "falls")

    def __call__(self, epoch: int) -> float:
        return self.start if self.gamma is None else self.gamma

    def observe(self, epoch: int, train_accuracy: float) -> None:
        """Take the training accuracy of epoch ``epoch``, which the next :meth:`observe_validation` uses to
        tell whether the warm-up has reached its plateau (see the class docstring).

        Raises
        ------
        ValueError
            If ``train_accuracy`` is not a finite fraction in [0, 1].
        """
        if not math.isfinite(train_accuracy) or not 0.0 <= train_accuracy <= 1.0:
            raise ValueError(f"training accuracy must be a fraction in [0, 1], got {train_accuracy!r}")
        self.train_accuracy = float(train_accuracy)

    @property
    def lag(self) -> int:
        r"""The smoothing's delay in epochs, :math:`L = \lceil (1 - \alpha) / \alpha \rceil`."""
        return math.ceil((1.0 - self.smoothing) / self.smoothing - 1e-12)

    def _epochs(self) -> int:
        if self.run_epochs is None:
            raise ValueError("the adaptive gamma controller needs the run's length: build it with "
                             "build_gamma_schedule('adaptive', run_epochs=E, ...) (the trainer does)")
        return self.run_epochs

    def initial_step(self) -> float:
        r"""The first growth step :math:`f_0`: ``factor``, or :math:`1.05^{200 / E}` when it is None."""
        if self.factor is not None:
            return self.factor
        return PAPER_FACTOR ** (PAPER_EPOCHS / self._epochs())

    def growth_epochs(self) -> int:
        r"""Epochs after which gamma no longer grows, :math:`E_g = \lceil g E \rceil`."""
        return math.ceil(self.grow_until * self._epochs() - 1e-9)

    def noise_window(self) -> int:
        r"""Innovations the measured noise is estimated from, :math:`W = \max(3, \lceil E / 10 \rceil)`."""
        return max(3, math.ceil(self._epochs() / 10 - 1e-9))

    def gamma_floor(self) -> float:
        r"""The smallest gamma a back-off reaches, :math:`\gamma_0 / f_0^{E_g}`: the range the growth window
        spans above the start, mirrored below it."""
        return self.start * math.exp(-self.growth_epochs() * math.log(self.initial_step()))

    def tolerance_for(self, best: float, samples: int | None, innovations: list[float] | None = None) -> float:
        r"""The tolerance :math:`\tau = \max(\tau_{min}, \min(\sigma_B, \sigma_M))` (class docstring).

        Parameters
        ----------
        best : float
            The best smoothed validation accuracy so far, :math:`r`.
        samples : int or None
            The validation size :math:`n`; ``None``: an exact accuracy, the floor :math:`\tau_{min}` alone.
        innovations : list of float, optional
            The latest innovations :math:`d_e = a_e - s_{e-1}`; with at least :meth:`noise_window` of them
            the measured term :math:`\sigma_M` caps the binomial one :math:`\sigma_B`.

        Returns
        -------
        float
        """
        if samples is None:
            return self.tolerance
        alpha = self.smoothing
        noise = NOISE_SIGMAS * math.sqrt(best * (1.0 - best) / samples) * math.sqrt(alpha / (2.0 - alpha))
        if innovations is not None and len(innovations) >= self.noise_window():
            mean = sum(innovations) / len(innovations)
            variance = sum((d - mean) ** 2 for d in innovations) / (len(innovations) - 1)
            noise = min(noise, NOISE_SIGMAS * math.sqrt(alpha / 2.0 * variance))
        return max(self.tolerance, noise)

    def _grow(self, gamma: float, decision: str) -> str:
        if self.observed % self.every != 0 or gamma >= self.gamma_max:
            return HOLD
        self.gamma = min(gamma * self.step, self.gamma_max)
        self.grew = True
        return decision

    def observe_validation(self, epoch: int, accuracy: float, samples: int | None = None) -> str:
        """Take the validation accuracy after epoch ``epoch``, set the next epoch's gamma, return the decision.

        Parameters
        ----------
        epoch : int
            The epoch just trained (0-based).
        accuracy : float
            Its accuracy on the validation split, a fraction in [0, 1].
        samples : int or None, optional
            Size :math:`n` of the validation split, which sets the noise part of the tolerance (see the
            class docstring); ``None``: the accuracy is exact and the tolerance is the ``tolerance`` floor.

        Returns
        -------
        str
            :data:`WARM_UP`, :data:`GROW`, :data:`HOLD`, :data:`BACK_OFF` or :data:`RESUME` (see the
            class docstring); the tolerance it was decided with is :attr:`last_tolerance`.

        Raises
        ------
        ValueError
            If ``accuracy`` is not a finite fraction in [0, 1], ``samples`` is not a positive integer, or
            the run's length ``run_epochs`` was never set.
        """
        if not math.isfinite(accuracy) or not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"validation accuracy must be a fraction in [0, 1], got {accuracy!r}")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"validation samples must be a positive integer or None, got {samples!r}")
        epochs = self._epochs()
        gamma = self(epoch)
        if self.step is None:
            self.step = self.initial_step()
        self.observed += 1
        if self.smoothed is not None:
            self.innovations = [*self.innovations, accuracy - self.smoothed][-self.noise_window():]
        self.smoothed = accuracy if self.smoothed is None else self.smoothed + self.smoothing * (
            accuracy - self.smoothed)
        self.best = self.smoothed if self.best is None else max(self.best, self.smoothed)
        self.last_tolerance = self.tolerance_for(self.best, samples, self.innovations)
        self.recent = [*self.recent, gamma][-(self.lag + 1):]
        done = epoch + 1
        if self.phase == WARMING:
            fit = self.smoothed if self.train_accuracy is None else self.train_accuracy
            self.train_accuracy = None  # each epoch's own: a later epoch without one judges the validation
            if self.plateau is None or fit > self.plateau + self.tolerance:
                self.plateau, self.flat = fit, 0
            else:
                self.flat += 1
            if self.flat >= max(self.patience, math.ceil(epochs / 20)) or done >= math.ceil(
                    self.growth_epochs() / 2):
                self.best = self.smoothed  # judged from here on against the level the fit reached
                self.last_tolerance = self.tolerance_for(self.best, samples, self.innovations)
                self.good_gamma = gamma
                if done < self.growth_epochs():
                    self.phase = GROWING
                    return self._grow(gamma, GROW)
                self.phase = HOLDING
                return HOLD
            return WARM_UP
        if self.wait > 0:
            self.wait -= 1
            if self.wait > 0:
                return HOLD
        may_grow = done < self.growth_epochs() and self.brackets < SETTLE_BACK_OFFS
        if self.smoothed >= self.best - self.last_tolerance:
            self.below, self.falls = 0, 0
            self.good_gamma = min(self.recent)
            if self.phase == COOLING:
                self.phase = GROWING if may_grow else HOLDING
                return self._grow(gamma, RESUME) if may_grow else HOLD
            if self.phase == GROWING and may_grow:
                return self._grow(gamma, GROW)
            self.phase = HOLDING
            return HOLD
        self.below += 1
        if self.below < self.patience:
            return HOLD
        if self.grew and self.good_gamma is not None and self.good_gamma < gamma:
            self.gamma = self.good_gamma
        else:
            floor = self.gamma_floor()
            if gamma <= floor * (1.0 + 1e-9):  # no penalty left to take back: the fall is not gamma's doing
                self.best, self.below = self.smoothed, 0
                self.last_tolerance = self.tolerance_for(self.best, samples, self.innovations)
                return HOLD
            # log gamma falls by 2^j log f_0 at the j-th consecutive fall (the accuracy never held in between)
            self.gamma = max(gamma * math.exp(-(2.0 ** self.falls) * math.log(self.initial_step())), floor)
            self.falls += 1
        if self.grew:  # an overshoot: the gamma worth having lies below the one that grew last
            self.step = math.sqrt(self.step)
            self.brackets += 1
        self.back_offs += 1
        self.grew, self.below, self.wait, self.recent = False, 0, self.lag + 1, []
        self.phase = COOLING
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


def build_gamma_schedule(kind: str, *, run_epochs: int | None = None, **options) -> ExponentialGamma:
    """Build a gamma schedule by name; the error lists accepted names and options.

    Parameters
    ----------
    kind : str
        A name of :data:`GAMMA_SCHEDULES`.
    run_epochs : int, optional
        The run's length, given to the schedules that scale with it (:class:`AdaptiveGamma`); the others
        ignore it.
    **options
        The schedule's options (:func:`gamma_option_names`).

    Returns
    -------
    ExponentialGamma

    Raises
    ------
    ValueError
        An unknown name or option, an option out of its range, or ``run_epochs`` not a positive integer.
    """
    if kind not in GAMMA_SCHEDULES:
        raise ValueError(f"unknown gamma schedule {kind!r}; accepted: {', '.join(GAMMA_SCHEDULES)}")
    cls = GAMMA_SCHEDULES[kind]
    accepted = gamma_option_names(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for gamma schedule {kind!r}; accepted: {accepted}")
    if run_epochs is not None and (isinstance(run_epochs, bool) or not isinstance(run_epochs, int) or run_epochs < 1):
        raise ValueError(f"run_epochs must be a positive integer, got {run_epochs!r}")
    schedule = cls(**options)
    if schedule.start <= 0 or schedule.gamma_max < schedule.start or schedule.every < 1:
        raise ValueError(
            f"gamma schedule {kind!r} needs 0 < start <= gamma_max and every >= 1, got {schedule}"
        )
    if isinstance(schedule, AdaptiveGamma):
        s = schedule
        if not (0.0 < s.validation_fraction < 1.0 and 0.0 <= s.tolerance < 1.0 and s.patience >= 1
                and 0.0 < s.smoothing <= 1.0 and 0.0 < s.grow_until <= 1.0 and (s.factor is None or s.factor > 1.0)):
            raise ValueError(
                f"gamma schedule {kind!r} needs 0 < validation_fraction < 1, 0 <= tolerance < 1, patience >= 1, "
                f"0 < smoothing <= 1, 0 < grow_until <= 1 and factor None or > 1, got "
                f"validation_fraction={s.validation_fraction}, tolerance={s.tolerance}, patience={s.patience}, "
                f"smoothing={s.smoothing}, grow_until={s.grow_until}, factor={s.factor}")
        s.run_epochs = run_epochs
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
