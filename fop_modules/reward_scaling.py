"""Reward standardisation fitted to uniformly random play: the scale-free part of a preset.

FOP's temperature alpha weighs entropy against reward (eq. 9-11), and the critics' and mixer's
learning rates move Q values by amounts of a fixed size per update. Both are therefore tied to
the reward's scale: a payoff table ten times larger leaves the same schedule ten times colder
and the same rates ten times slower to fit it. :func:`fit_reward_standardisation` measures the
reward's location and spread once, from a uniformly random policy that respects the action
masks, and returns TorchRL's :class:`~torchrl.envs.RewardScaling` transform that maps the env's
reward to ``(r - loc) / scale``. A preset's temperature and rates are then given in those units.

Q values learned on a standardised one-step game are in the same units: ``q * scale + loc``
gives them back in the game's (:func:`to_reward_units`). On a multi-step task the reward is only
scaled: subtracting ``loc`` from every step would pay (or charge) the team for each step it stays
in play, so where episodes can end early (VMAS balance drops its package, a SMAC battle is won or
lost) it would change which policy is best. The default ``centre=None`` tells the two apart from
the random play itself.
"""

from __future__ import annotations

import math

import torch
from tensordict import NestedKey, TensorDictBase
from torchrl.envs import EnvBase, RewardScaling

__all__ = ["fit_reward_standardisation", "to_reward_units"]

MIN_SCALE = 1e-8  # a constant reward has no spread: keep the scale finite


@torch.no_grad()
def fit_reward_standardisation(
    env: EnvBase, frames: int = 1024, *, std: float = 1.0, centre: bool | None = None, seed: int | None = 0,
    reward_key: NestedKey = ("next", "reward"),
) -> RewardScaling:
    """``RewardScaling`` that standardises ``env``'s reward, fitted to uniformly random play.

    Plays ``env`` with uniformly random actions (among the available ones where the env has an
    action mask on its action spec, as the SMAC and SMAX adapters do) for at least ``frames``
    frames, then measures the rewards' mean and standard deviation over every frame. The random actions come from torch's global generator,
    seeded with ``seed`` inside :func:`torch.random.fork_rng`: the fit is repeatable and leaves
    the caller's random stream untouched (``seed=None``: draw from the stream as it is).

    Args:
        env: the env to measure (it is reset and stepped; its rollouts are discarded).
        frames: frames of random play to measure (whole rollouts of ``env``'s batch).
        std: the standard deviation the reward has after the transform, under random play.
        centre: subtract the mean (``loc``) or not (scale only); ``None``: centre one-step games
            only (every random-play step ended its episode), since on a multi-step task a shifted
            reward is a bonus or a cost per step survived and changes the best policy.
        seed: seed of the random actions (None: the global stream, advanced).
        reward_key: where ``env.rollout`` puts the reward.

    Returns:
        ``RewardScaling(loc, scale, standard_normal=True)``: reward -> ``(r - loc) / scale``
        with ``scale`` = the measured standard deviation / ``std``.

    Raises:
        ValueError: if ``frames < 1`` or ``std <= 0``, or the rewards are not finite.

    Examples:
        >>> from torchrl.envs import TransformedEnv
        >>> from fop_modules.envs import MatrixGameEnv
        >>> env = MatrixGameEnv([[80.0, -120.0], [-120.0, 0.0]], num_envs=64)
        >>> transform = fit_reward_standardisation(env, frames=4096)
        >>> loc, scale = float(transform.loc), float(transform.scale)  # the 4 payoffs: mean -40, std 84.9
        >>> abs(loc + 40) < 5, abs(scale - 84.9) < 5
        (True, True)
        >>> rewards = TransformedEnv(env, transform).rollout(1)["next", "reward"]
        >>> bool(rewards.abs().max() < 2)
        True
    """
    if frames < 1:
        raise ValueError(f"fit_reward_standardisation needs frames >= 1, got {frames}")
    if not 0 < std < math.inf:
        raise ValueError(f"fit_reward_standardisation needs a finite std > 0, got {std}")
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        reward, one_step = _random_play_rewards(env, frames, reward_key)
    if not torch.isfinite(reward).all():
        raise ValueError("fit_reward_standardisation: the env returned non-finite rewards under random play")
    centre = one_step if centre is None else centre
    loc = reward.mean() if centre else reward.new_zeros(())
    scale = reward.std(correction=0).clamp_min(MIN_SCALE) / std
    return RewardScaling(loc=loc.float(), scale=scale.float(), standard_normal=True)


def _random_play_rewards(env: EnvBase, frames: int, reward_key: NestedKey) -> tuple[torch.Tensor, bool]:
    """Every reward of at least ``frames`` frames of uniformly random play (float64, flat), and
    whether every one of those steps ended its episode (a one-step game)."""
    batch = max(env.batch_size.numel(), 1)
    rewards, played, one_step = [], 0, True
    while played < frames:  # rollout() draws actions with env.rand_action: the spec's mask holds
        steps = max(1, -(-(frames - played) // batch))
        rollout: TensorDictBase = env.rollout(steps, break_when_any_done=False)
        rewards.append(rollout.get(reward_key).reshape(-1).double())
        one_step = one_step and bool(rollout.get(("next", "done")).all())
        played += rollout.numel()
    return torch.cat(rewards), one_step


def to_reward_units(value: torch.Tensor, transform: RewardScaling | None) -> torch.Tensor:
    """A one-step value learned on standardised rewards, in the env's reward units
    (``value * scale + loc``); unchanged when ``transform`` is None.

    Examples:
        >>> from torchrl.envs import RewardScaling
        >>> to_reward_units(torch.tensor([1.0, -0.5]), RewardScaling(loc=2.0, scale=4.0, standard_normal=True))
        tensor([6., 0.])
    """
    if transform is None:
        return value
    return value * transform.scale + transform.loc
