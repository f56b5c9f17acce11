"""Schedules of the team temperature alpha as functions of an explicit env-step count.

A schedule is a small picklable callable ``schedule(step) -> alpha``. It holds no
state of its own, so a checkpoint only needs the step count to restore it. The
learned (dual) temperature is not a schedule: it lives in :class:`~fop_modules.FOPLoss`
as ``log_alpha`` with its own objective ``loss_alpha`` (SAC's dual update).

The authors' SMAC schedule ``alpha = max(0.05, 0.5 - t_env / 200000)`` is written as what it
is: ``LinearTemperature(start=0.5, end=0.05, steps=90_000)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "TemperatureSchedule",
    "ConstantTemperature",
    "LinearTemperature",
    "ExponentialTemperature",
    "check_alpha_source",
]


def _check_step(step: int) -> int:
    if step < 0:
        raise ValueError(f"temperature schedules take a step count >= 0, got {step}")
    return step


def check_alpha_source(temperature: "TemperatureSchedule | None", learn_alpha: bool) -> None:
    """FOP's alpha comes from exactly one place: a schedule (``temperature``, with
    ``FOPLoss(learn_alpha=False)``) or the dual objective (``temperature=None`` with
    ``FOPLoss(learn_alpha=True)``). :class:`~fop_modules.lightning.FOPLightningModule` checks its arguments
    with it; a recipe checks its config with it before anything is built.

    Raises:
        ValueError: no source or two sources, saying which argument to change.

    Examples:
        >>> check_alpha_source(LinearTemperature(0.5, 0.05, 1000), learn_alpha=False)
        >>> check_alpha_source(None, learn_alpha=True)
        >>> check_alpha_source(None, learn_alpha=False)
        Traceback (most recent call last):
        ...
        ValueError: alpha has no source: temperature is None and FOPLoss(learn_alpha=False) does not learn it; give a TemperatureSchedule, or build FOPLoss with learn_alpha=True
    """
    if temperature is None and not learn_alpha:
        raise ValueError(
            "alpha has no source: temperature is None and FOPLoss(learn_alpha=False) does not learn it; "
            "give a TemperatureSchedule, or build FOPLoss with learn_alpha=True"
        )
    if temperature is not None and learn_alpha:
        raise ValueError(
            f"alpha has two sources: the schedule {temperature} and FOPLoss(learn_alpha=True), which "
            "learns it; pass no schedule (None), or build FOPLoss with learn_alpha=False"
        )


@dataclass(frozen=True)
class TemperatureSchedule:
    """Base class: ``schedule(step)`` returns alpha after ``step`` env steps."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class ConstantTemperature(TemperatureSchedule):
    """alpha = ``value`` at every step. ``value=0`` gives greedy FOP (Fig. 3 ablation).

    Examples:
        >>> ConstantTemperature(0.2)(10_000)
        0.2
    """

    value: float

    def __post_init__(self) -> None:
        if not self.value >= 0:
            raise ValueError(f"ConstantTemperature.value must be >= 0, got {self.value}")

    def __call__(self, step: int) -> float:
        _check_step(step)
        return float(self.value)


@dataclass(frozen=True)
class LinearTemperature(TemperatureSchedule):
    """alpha goes linearly from ``start`` to ``end`` over ``steps`` env steps, then stays at ``end``.

    Examples:
        >>> sched = LinearTemperature(start=0.5, end=0.05, steps=90_000)  # the authors' SMAC schedule
        >>> sched(0), sched(45_000), sched(90_000), sched(2_000_000)
        (0.5, 0.275, 0.05, 0.05)
    """

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.start >= 0 and self.end >= 0):
            raise ValueError(
                f"LinearTemperature start and end must be >= 0, got {self.start}, {self.end}"
            )
        if self.steps < 1:
            raise ValueError(f"LinearTemperature.steps must be >= 1, got {self.steps}")

    def __call__(self, step: int) -> float:
        frac = min(_check_step(step) / self.steps, 1.0)
        return float((1.0 - frac) * self.start + frac * self.end)  # exactly `end` once frac == 1


@dataclass(frozen=True)
class ExponentialTemperature(TemperatureSchedule):
    """alpha decays geometrically from ``start`` to ``end`` over ``steps`` env steps, then stays at ``end``.

    alpha(t) = start * (end / start) ** (t / steps)

    Examples:
        >>> sched = ExponentialTemperature(start=1.0, end=0.01, steps=10_000)
        >>> round(sched(5_000), 6), sched(10_000), sched(20_000)
        (0.1, 0.01, 0.01)
    """

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.end > 0):
            raise ValueError(
                "ExponentialTemperature start and end must be > 0 (use LinearTemperature "
                f"or ConstantTemperature(0) to reach zero), got {self.start}, {self.end}"
            )
        if self.steps < 1:
            raise ValueError(f"ExponentialTemperature.steps must be >= 1, got {self.steps}")

    def __call__(self, step: int) -> float:
        if _check_step(step) >= self.steps:
            return float(self.end)
        return float(self.start * math.exp(step / self.steps * math.log(self.end / self.start)))
