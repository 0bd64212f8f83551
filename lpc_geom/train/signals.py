"""Stopping a training by a signal: SIGINT and SIGTERM end it at the next step boundary, with a checkpoint.

:class:`StopSignals` holds the handlers while :meth:`lpc_geom.train.Trainer.fit` runs; the trainer polls
``received`` at each step boundary and raises :class:`TrainingStopped` after writing its checkpoint.
:func:`signals_deferred` holds every Python handler back while a run file is written.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingStopped", "signals_deferred"]

#: Signals that stop a training at the next step boundary (with a checkpoint) instead of killing it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(KeyboardInterrupt):
    """A training stopped by a signal (SIGINT, SIGTERM) at a step boundary, after writing a checkpoint.

    A subclass of KeyboardInterrupt, so that ``except Exception`` around a training does not swallow a
    Ctrl-C. Attributes: ``signum``, ``epoch`` (the epoch in progress), ``checkpoint`` (the file written, or
    None when a second signal stopped it at once: then the last periodic checkpoint stays) and ``out_dir``.
    ``train(config, resume=True)`` continues it.
    """

    def __init__(self, signum: int, epoch: int | None = None, checkpoint: Path | None = None,
                 out_dir: Path | None = None):
        super().__init__(signum)
        self.signum, self.epoch, self.checkpoint, self.out_dir = signum, epoch, checkpoint, out_dir

    def __str__(self) -> str:
        where = (f"checkpoint written to {self.checkpoint}" if self.checkpoint is not None
                 else "stopped at once by a second signal, the last checkpoint stays")
        return (f"{signal.Signals(self.signum).name}: training in {self.out_dir} stopped at epoch {self.epoch}; "
                f"{where}; resume it with resume=True")


class StopSignals:
    """Handlers for :data:`STOP_SIGNALS` for the duration of a training; the previous ones come back after.

    The first signal is recorded (the trainer stops at the next step boundary); a second one raises
    :class:`TrainingStopped` at once. Installed only in the main thread (where Python runs handlers).
    """

    def __init__(self, signals):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                # A signal the process ignores (nohup, a sweep worker leaving Ctrl-C to its sweep) stays ignored.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            return
        self.restore()
        raise TrainingStopped(signum)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self.restore()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back the Python signal handlers of this process while the block runs, then deliver what came.

    A handler runs between any two bytecodes of the main thread, also inside ``torch.save``'s pickler; one
    that raises there (``SystemExit`` from submitit's requeue, ``KeyboardInterrupt``) surfaces as a torch
    error and the write is lost. Outside the main thread no handler can be replaced and none runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler):
            saved[signum] = handler
            signal.signal(signum, lambda received, _frame: pending.append(received))
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)
