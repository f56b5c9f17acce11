"""make_vmas_env: specs, FOP's keys, team reward, time limit vs termination, partial resets,
seeding and scenario errors, on VMAS's navigation, balance and transport."""

from __future__ import annotations

import pytest
import torch
from torchrl.data import Bounded
from torchrl.envs import VmasEnv
from torchrl.envs.utils import check_env_specs, step_mdp

from fop_modules.envs.vmas import make_vmas_env

SCENARIOS = ["navigation", "balance", "transport"]
E = 3  # parallel copies in every test
# scenario -> (N, obs): VMAS 1.5.2 defaults (transport with a light package so pushes move it)
SIZES = {"navigation": (4, 18), "balance": (3, 16), "transport": (4, 11)}
KWARGS = {"navigation": {}, "balance": {}, "transport": {"package_mass": 1}}
ACTION_DIM = 2  # every verified scenario takes a 2-D force per agent
OBS_KEY, ACTION_KEY = ("agents", "observation"), ("agents", "action")
FLAG_KEYS = ("done", "terminated", "truncated")


def _make(scenario, **kwargs):
    return make_vmas_env(scenario, **{"num_envs": E, "seed": 0, **KWARGS[scenario], **kwargs})


def _policy(scenario, obs, generator):
    """Random forces in [-1, 1]; transport agents also push towards the package (obs 6:8)."""
    action = torch.rand(*obs.shape[:-1], ACTION_DIM, generator=generator) * 2 - 1  # [E, N, 2]
    if scenario == "transport":
        action = (action + 5 * obs[..., 6:8]).clamp(-1, 1)
    return action


def _play(env, scenario, steps, seed=0):
    """Steps ``env`` from a reset without auto-resets; returns the stacked step tds [E, T]."""
    generator = torch.Generator().manual_seed(seed)
    td, out = env.reset(), []
    for _ in range(steps):
        td.set(ACTION_KEY, _policy(scenario, td.get(OBS_KEY), generator))
        td = env.step(td)
        out.append(td.clone())
        td = step_mdp(td)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_specs_keys_shapes_and_dtypes(scenario):
    env = _make(scenario, max_steps=10)
    check_env_specs(env)
    n, obs = SIZES[scenario]
    assert env.reward_keys == ["reward"]
    assert sorted(env.done_keys) == sorted(FLAG_KEYS)
    assert env.full_observation_spec[OBS_KEY].shape == (E, n, obs)
    assert env.full_observation_spec["state"].shape == (E, n * obs)
    action_spec = env.full_action_spec[ACTION_KEY]
    assert isinstance(action_spec, Bounded) and action_spec.shape == (E, n, ACTION_DIM)
    assert action_spec.dtype == torch.float32
    bare = VmasEnv(scenario, num_envs=E, continuous_actions=True, **KWARGS[scenario])
    bare_spec = bare.full_action_spec[ACTION_KEY]
    assert torch.equal(action_spec.space.low, bare_spec.space.low)  # bounds from VMAS
    assert torch.equal(action_spec.space.high, bare_spec.space.high)

    td = _play(env, scenario, steps=3)  # [E, T]
    expected = {
        OBS_KEY: ((E, 3, n, obs), torch.float32),
        ACTION_KEY: ((E, 3, n, ACTION_DIM), torch.float32),
        "state": ((E, 3, n * obs), torch.float32),
        ("next", "reward"): ((E, 3, 1), torch.float32),
        **{("next", k): ((E, 3, 1), torch.bool) for k in FLAG_KEYS},
        **{k: ((E, 3, 1), torch.bool) for k in FLAG_KEYS},
    }
    for key, (shape, dtype) in expected.items():
        assert td.get(key).shape == shape, key
        assert td.get(key).dtype == dtype, key
    assert ("next", "agents", "reward") not in td.keys(True)  # one reward key: the team's
    # "state" concatenates the agents' observations, agent 0 first
    assert torch.equal(td.get("state"), td.get(OBS_KEY).flatten(-2))
    assert torch.equal(td.get(("next", "state")), td.get(("next", *OBS_KEY)).flatten(-2))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_team_reward_is_the_mean_of_vmas_agent_rewards(scenario):
    steps = 25  # transport's agents reach the package after ~20 steps; it pays only once it moves
    ours = _play(_make(scenario, max_steps=50), scenario, steps)
    # the bare env, same seed (VMAS re-seeds its stream on construction) and the same actions
    bare = VmasEnv(scenario, num_envs=E, continuous_actions=True, seed=0, **KWARGS[scenario])
    td, agent_rewards = bare.reset(), []
    for t in range(steps):
        assert torch.equal(td.get(OBS_KEY), ours.get(OBS_KEY)[:, t])
        td.set(ACTION_KEY, ours.get(ACTION_KEY)[:, t])
        td = bare.step(td)
        agent_rewards.append(td.get(("next", "agents", "reward")))  # [E, N, 1]
        td = step_mdp(td)
    agent_rewards = torch.stack(agent_rewards, dim=1)  # [E, T, N, 1]
    assert agent_rewards.abs().sum() > 0  # the check below is not 0 == 0
    torch.testing.assert_close(ours.get(("next", "reward")), agent_rewards.mean(-2))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_time_limit_truncates_and_never_terminates(scenario):
    max_steps = 4
    env = _make(scenario, max_steps=max_steps)
    td = env.rollout(max_steps + 2, break_when_any_done=False)  # auto-resets after the limit
    nxt = td.get("next")
    terminated = nxt.get("terminated").squeeze(-1)  # [E, T]
    truncated = nxt.get("truncated").squeeze(-1)
    unfinished = ~terminated[:, :max_steps].any(-1)  # envs that did not end before the limit
    assert unfinished.sum() >= 2
    limit = max_steps - 1  # index of the max_steps-th step
    assert truncated[unfinished, limit].all()
    assert not terminated[unfinished, limit].any()
    assert nxt.get("done").squeeze(-1)[unfinished, limit].all()
    assert not truncated[unfinished, :limit].any()
    assert torch.equal(nxt.get("done"), nxt.get("terminated") | nxt.get("truncated"))
    steps_seen = nxt.get("step_count").squeeze(-1)[unfinished]
    assert steps_seen.tolist() == [[1, 2, 3, 4, 1, 2]] * int(unfinished.sum())  # reset after it


def test_scenario_done_terminates_without_truncating():
    # one navigation agent steered to its goal (obs 2:4 velocity, 4:6 position - goal)
    env = make_vmas_env("navigation", num_envs=E, max_steps=50, seed=0, n_agents=1)
    td = env.reset()
    ended = torch.zeros(E, dtype=torch.bool)
    for _ in range(50):
        obs = td.get(OBS_KEY)
        td.set(ACTION_KEY, (-10 * obs[..., 4:6] - 2 * obs[..., 2:4]).clamp(-1, 1))
        td, td_next = env.step_and_maybe_reset(td)  # resets the envs that are done
        terminated = td.get(("next", "terminated")).squeeze(-1)  # [E]
        assert not td.get(("next", "truncated")).any()  # the goal is reached before the limit
        assert torch.equal(td.get(("next", "done")).squeeze(-1), terminated)
        assert (td_next.get("step_count").squeeze(-1)[terminated] == 0).all()
        ended |= terminated
        td = td_next
    assert ended.all()


def test_partial_reset_resets_only_the_masked_envs_and_their_counters():
    env = _make("navigation", max_steps=20)
    td = step_mdp(_play(env, "navigation", steps=3)[:, -1])  # the state after 3 steps
    assert td.get("step_count").squeeze(-1).tolist() == [3, 3, 3]
    before = td.get(OBS_KEY).clone()
    mask = torch.tensor([[True], [False], [True]])
    out = env.reset(td.set("_reset", mask))
    assert out.get("step_count").squeeze(-1).tolist() == [0, 3, 0]
    assert torch.equal(out.get(OBS_KEY)[1], before[1])  # untouched
    for e in (0, 2):
        assert not torch.equal(out.get(OBS_KEY)[e], before[e])  # new positions
    assert torch.equal(out.get("state"), out.get(OBS_KEY).flatten(-2))
    assert not out.get("done").any()


def test_seeding_is_reproducible():
    a = _play(_make("balance", max_steps=5, seed=7), "balance", steps=4)
    b = _play(_make("balance", max_steps=5, seed=7), "balance", steps=4)
    c = _play(_make("balance", max_steps=5, seed=8), "balance", steps=4)
    assert torch.equal(a.get(OBS_KEY), b.get(OBS_KEY))
    assert torch.equal(a.get(("next", "reward")), b.get(("next", "reward")))
    assert not torch.equal(a.get(OBS_KEY), c.get(OBS_KEY))
    env = _make("navigation", max_steps=5)  # set_seed, as the evaluation loop does
    env.set_seed(3)
    first = env.reset().get(OBS_KEY)
    env.set_seed(3)
    assert torch.equal(env.reset().get(OBS_KEY), first)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match=r"unknown VMAS scenario 'navigaton'.*'navigation'"):
        make_vmas_env("navigaton")
    with pytest.raises(ValueError, match="num_envs"):
        make_vmas_env("navigation", num_envs=0)
    with pytest.raises(ValueError, match="max_steps"):
        make_vmas_env("navigation", max_steps=0)
