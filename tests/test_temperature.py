"""Temperature schedules: endpoints, the authors' formula, monotonicity, pickling, bad input."""

from __future__ import annotations

import math
import pickle

import pytest

from fop_modules import (
    ConstantTemperature,
    ExponentialTemperature,
    LinearTemperature,
    TemperatureSchedule,
)

SCHEDULES = [
    ConstantTemperature(0.2),
    ConstantTemperature(0.0),
    LinearTemperature(1.0, 0.01, 10_000),
    LinearTemperature(start=0.5, end=0.05, steps=90_000),
    ExponentialTemperature(1.0, 0.01, 10_000),
]


# ---------------------------------------------------------------------------- endpoints


def test_constant_is_constant():
    sched = ConstantTemperature(0.2)
    assert [sched(t) for t in (0, 1, 10_000, 10**9)] == [0.2] * 4
    assert ConstantTemperature(0)(123) == 0.0  # greedy FOP (Fig. 3 ablation)


def test_linear_endpoints():
    sched = LinearTemperature(1.0, 0.01, 10_000)
    assert sched(0) == 1.0
    assert sched(10_000) == pytest.approx(0.01, abs=1e-12)
    assert sched(10_001) == pytest.approx(0.01, abs=1e-12)
    assert sched(10**9) == pytest.approx(0.01, abs=1e-12)
    # the midpoint is the arithmetic mean
    assert sched(5_000) == pytest.approx((1.0 + 0.01) / 2)
    assert sched(2_500) == pytest.approx(1.0 - 0.25 * 0.99)


@pytest.mark.parametrize("t", [0, 1, 10_000, 50_000, 89_999, 90_000, 90_001, 200_000, 2_050_000])
def test_linear_matches_authors_formula(t):
    """The authors' SMAC code: alpha = max(0.05, 0.5 - t_env / 200000)."""
    sched = LinearTemperature(start=0.5, end=0.05, steps=90_000)
    assert sched(t) == pytest.approx(max(0.05, 0.5 - t / 200_000), abs=1e-12)


def test_linear_increasing_schedule_is_allowed():
    sched = LinearTemperature(0.0, 1.0, 4)
    assert [sched(t) for t in range(6)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_exponential_endpoints_and_geometric_midpoint():
    sched = ExponentialTemperature(1.0, 0.01, 10_000)
    assert sched(0) == pytest.approx(1.0)
    assert sched(10_000) == pytest.approx(0.01)
    assert sched(50_000) == pytest.approx(0.01)
    # geometric mean at the midpoint: sqrt(1 * 0.01) = 0.1
    assert sched(5_000) == pytest.approx(math.sqrt(1.0 * 0.01))
    # constant ratio over equal step intervals
    ratios = [sched(t + 1_000) / sched(t) for t in range(0, 9_000, 1_000)]
    assert ratios == pytest.approx([0.01 ** (1_000 / 10_000)] * len(ratios))


def test_exponential_other_values():
    sched = ExponentialTemperature(start=2.0, end=0.5, steps=100)
    assert sched(50) == pytest.approx(1.0)  # sqrt(2 * 0.5)
    assert sched(25) == pytest.approx(2.0 * 0.25**0.25)


# ---------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize(
    "sched", [LinearTemperature(1.0, 0.01, 10_000), ExponentialTemperature(1.0, 0.01, 10_000),
              LinearTemperature(0.5, 0.05, 90_000)]
)
def test_decreasing_schedules_are_monotone_and_bounded(sched):
    steps = list(range(0, 3 * sched.steps, max(1, sched.steps // 97)))
    values = [sched(t) for t in steps]
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:]))
    assert all(sched.end - 1e-12 <= v <= sched.start + 1e-12 for v in values)
    # strictly decreasing before the end point
    inner = [sched(t) for t in range(0, sched.steps + 1, sched.steps // 10)]
    assert all(b < a for a, b in zip(inner, inner[1:]))


# ---------------------------------------------------------------------------- types


@pytest.mark.parametrize("sched", SCHEDULES)
def test_returns_python_float(sched):
    assert isinstance(sched, TemperatureSchedule)
    for t in (0, 7, 10**6):
        assert type(sched(t)) is float


# ---------------------------------------------------------------------------- pickling


@pytest.mark.parametrize("sched", SCHEDULES)
def test_pickle_round_trip(sched):
    clone = pickle.loads(pickle.dumps(sched))
    assert clone == sched
    assert type(clone) is type(sched)
    assert clone is not sched
    for t in (0, 1, 4_999, 5_000, 10_000, 89_999, 90_000, 10**7):
        assert clone(t) == sched(t)


def test_schedules_are_immutable():
    sched = LinearTemperature(1.0, 0.01, 10_000)
    with pytest.raises(AttributeError):
        sched.start = 2.0  # frozen dataclass: a checkpoint only needs the step


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sched", SCHEDULES)
def test_negative_step_raises(sched):
    with pytest.raises(ValueError, match="step"):
        sched(-1)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ConstantTemperature(-0.1), "value"),
        (lambda: ConstantTemperature(float("nan")), "value"),
        (lambda: LinearTemperature(-1.0, 0.1, 10), "start and end"),
        (lambda: LinearTemperature(1.0, -0.1, 10), "start and end"),
        (lambda: LinearTemperature(1.0, 0.1, 0), "steps"),
        (lambda: LinearTemperature(1.0, 0.1, -5), "steps"),
        (lambda: ExponentialTemperature(1.0, 0.0, 10), "start and end"),
        (lambda: ExponentialTemperature(0.0, 0.1, 10), "start and end"),
        (lambda: ExponentialTemperature(-1.0, 0.1, 10), "start and end"),
        (lambda: ExponentialTemperature(1.0, 0.1, 0), "steps"),
    ],
)
def test_invalid_parameters_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------------------- where alpha comes from


@pytest.mark.parametrize("learn_alpha, temperature, match", [
    (False, None, "alpha has no source"),
    (True, ConstantTemperature(0.2), "alpha has two sources"),
])
def test_the_learner_takes_alpha_from_one_source(learn_alpha, temperature, match):
    """FOPLightningModule refuses a loss and a temperature that give alpha no source or two
    (the rule check_alpha_source holds, which the recipe's schema also runs)."""
    from fop_modules import FOPLoss, FOPMixer
    from fop_modules.lightning import FOPLightningModule
    from fop_modules.optimisation import OptimConfig
    from fop_modules.loop_config import CollectConfig
    from fop_modules.networks import discrete_actor, discrete_critic

    loss = FOPLoss(discrete_actor(2, 1, 3), discrete_critic(2, 1, 3), FOPMixer(2, 1, 3),
                   action_space="discrete", learn_alpha=learn_alpha, num_actions=3)
    collect = CollectConfig(total_frames=64, frames_per_batch=16, buffer_size=64, batch_size=16, warmup_frames=16)
    with pytest.raises(ValueError, match=match):
        FOPLightningModule(loss, loss.actor_network, FOPLightningModule.fop_objectives(loss), lambda: None, collect=collect,
                           optim=OptimConfig(), temperature=temperature)
    schedule_ok = None if learn_alpha else ConstantTemperature(0.2)
    FOPLightningModule(loss, loss.actor_network, FOPLightningModule.fop_objectives(loss), lambda: None, collect=collect,
                       optim=OptimConfig(), temperature=schedule_ok)  # the one source: accepted
