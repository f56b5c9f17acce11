"""Scripted SMAX teams: the reference win rates of docs/results.md, and bad arguments."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("jaxmarl")  # the [smax] extra

from fop_modules.envs import SMAXEnv  # noqa: E402
from fop_modules.envs import focus_fire_policy  # noqa: E402
from fop_modules.evaluation import play_greedy  # noqa: E402


def _win_rate(target: str) -> float:
    torch.manual_seed(0)
    env = SMAXEnv("3m", num_envs=32, seed=0)
    policy = focus_fire_policy(env.n_agents, env.n_enemies, target)
    return play_greedy(env, policy, episodes=32, max_steps=env.episode_limit).wins.float().mean().item()


def test_focus_fire_by_health_beats_by_index_beats_random_targets_on_3m():
    random_target, lowest_index, weakest = (_win_rate(t) for t in ("random", "lowest_index", "weakest"))
    assert random_target < 0.4 < lowest_index < weakest, (random_target, lowest_index, weakest)


def test_scripted_actions_are_available():
    torch.manual_seed(0)
    env = SMAXEnv("2s3z", num_envs=4, seed=0)
    for target in ("random", "lowest_index", "weakest"):
        rollout = env.rollout(40, focus_fire_policy(env.n_agents, env.n_enemies, target), break_when_any_done=False)
        mask, action = rollout["agents", "action_mask"], rollout["agents", "action"]
        assert mask.gather(-1, action.unsqueeze(-1)).all(), target


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="target must be one of"):
        focus_fire_policy(3, 3, "closest")
    with pytest.raises(ValueError, match="must be >= 1"):
        focus_fire_policy(0, 3)


def test_greedy_rollouts_stop_once_every_battle_has_ended():
    """Evaluation plays each copy's first battle only: it stops at the longest battle (here
    under 30 steps), not at the 101-step episode limit, and counts the same wins as play_greedy."""
    from fop_modules.evaluation import first_episodes, greedy_rollouts

    torch.manual_seed(0)
    env = SMAXEnv("3m", num_envs=16, seed=0)
    (rollout,) = greedy_rollouts(env, focus_fire_policy(3, 3, "weakest"), episodes=16, max_steps=env.episode_limit)
    _, ended, won = first_episodes(rollout)
    assert ended.all() and rollout.shape[1] < 30, rollout.shape
    done_at = rollout["next", "done"].squeeze(-1).int().argmax(-1)
    assert done_at.max() == rollout.shape[1] - 1  # the longest battle ends at the last step
    assert 0 < won.sum() < 16
