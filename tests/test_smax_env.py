"""SMAXEnv: specs, masks, partial resets, time limits, wins, info, seeding, scenarios."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("jaxmarl")  # the [smax] extra

import jax  # noqa: E402
from torchrl.collectors import Collector  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

from fop_modules.envs.smax import STOP_ACTION, SMAXEnv  # noqa: E402

NUM_ENVS = [1, 4]
E = 4  # batch of the single-size tests; each (kwargs, E) pair costs a ~5 s jit compile
SHORT = 3  # max_steps of short episodes (4 steps): armies start too far apart to fight
MASK_KEY = ("agents", "action_mask")
ACTION_KEY = ("agents", "action")
INFO_KEYS = ("battle_won", "episode_limit", "dead_allies", "dead_enemies")
FLAG_INFO_KEYS = (("info", "battle_won"), ("info", "episode_limit"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _available(mask, action):
    """Whether each chosen action is available under ``mask``: [..., N, A], [..., N] -> [..., N]."""
    return mask.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def _focus_fire(mask):
    """Attack the lowest-index enemy in range, else move east (towards the enemy): [E, N, A]."""
    attack = mask[..., STOP_ACTION + 1 :]
    first = attack.long().argmax(-1) + STOP_ACTION + 1  # [E, N]
    return torch.where(attack.any(-1), first, torch.ones_like(first))  # 1 = east


def _stop(mask):
    """Every unit stops: [E, N, A] -> [E, N]."""
    return torch.full(mask.shape[:-1], STOP_ACTION)


def _first_episodes(env, policy, max_steps=200):
    """Steps with ``policy(mask)`` until every env has ended an episode (no resets).

    Returns the "next" td of each env's last step of its first episode, that episode's length
    and return ([E] each), and the "next" tds of all steps taken (stacked as [E, T]).
    """
    td, steps = env.reset(), []
    ended = torch.zeros(env.batch_size, dtype=torch.bool)
    last = None
    length = torch.zeros(env.batch_size, dtype=torch.long)
    ret = torch.zeros(env.batch_size)
    for _ in range(max_steps):
        td[ACTION_KEY] = policy(td[MASK_KEY])
        nxt = env.step(td)["next"]
        steps.append(nxt.clone())
        length += ~ended
        ret += nxt["reward"][:, 0] * ~ended
        now = nxt["done"][:, 0] & ~ended
        last = nxt.clone() if last is None else last
        last[now] = nxt[now]
        ended |= now
        if ended.all():
            return last, length, ret, torch.stack(steps, 1)
        td = nxt
    raise AssertionError("some episodes did not end")


def _leaves(state):
    return [np.array(x) for x in jax.tree.leaves(state)]


def _check_next_is_terminal(td):
    """In a [E, T] rollout, "next" is the next root within an episode, the terminal obs at ends."""
    done = td["next", "done"][:, :-1, 0]  # [E, T-1]
    nxt, root = td["next", "agents", "observation"][:, :-1], td["agents", "observation"][:, 1:]
    assert done.any()
    assert (nxt[~done] == root[~done]).all()
    assert (nxt[done] != root[done]).flatten(1).any(-1).all()  # root: the fresh episode


@pytest.mark.parametrize("num_envs", NUM_ENVS)
def test_check_env_specs(num_envs):
    env = SMAXEnv("3m", num_envs=num_envs, seed=0)
    check_env_specs(env)
    assert env.batch_size == (num_envs,)


@pytest.mark.parametrize("num_envs", NUM_ENVS)
def test_keys_shapes_and_dtypes(num_envs):
    env = SMAXEnv("3m", num_envs=num_envs, seed=0)
    E, N, A = num_envs, 3, 8
    for td in (env.reset(), env.rand_step(env.reset())["next"]):
        assert td["agents", "observation"].shape == (E, N, 75)
        assert td["agents", "observation"].dtype == torch.float32
        assert td[MASK_KEY].shape == (E, N, A) and td[MASK_KEY].dtype == torch.bool
        assert td["state"].shape == (E, 72) and td["state"].dtype == torch.float32
        for key in ("done", "terminated", "truncated", *FLAG_INFO_KEYS):
            assert td[key].shape == (E, 1) and td[key].dtype == torch.bool, key
        for key in ("dead_allies", "dead_enemies"):
            assert td["info", key].shape == (E, 1) and td["info", key].dtype == torch.int64
        assert set(td["info"].keys()) == set(INFO_KEYS)
    assert td["reward"].shape == (E, 1) and td["reward"].dtype == torch.float32
    spec = env.full_action_spec[ACTION_KEY]
    assert spec.shape == (E, N) and spec.n == A and spec.dtype == torch.int64


def test_rollout_random_actions_are_available():
    env = SMAXEnv("3m", num_envs=E, seed=1, max_steps=SHORT)  # short episodes: partial resets
    td = env.rollout(40, break_when_any_done=False)  # no policy: env.rand_action, live mask
    assert td["next", "done"].sum() >= 8
    assert _available(td[MASK_KEY], td[ACTION_KEY]).all()


def test_collector_random_actions_are_available():
    env = SMAXEnv("3m", num_envs=E, seed=1, max_steps=SHORT)  # short episodes: resets mid-batch

    def policy(td):  # samples the env's live action spec, whose mask tracks action_mask
        return td.update(env.full_action_spec.rand())

    collector = Collector(env, policy, frames_per_batch=E * 40, total_frames=E * 40)
    try:
        data = next(iter(collector))
    finally:
        collector.shutdown()
    assert data["next", "done"].sum() >= 8  # several episodes ended and were reset
    assert _available(data[MASK_KEY], data[ACTION_KEY]).all()
    assert data["next", MASK_KEY][..., STOP_ACTION].all()  # stop is always available
    _check_next_is_terminal(data)  # the in-place partial resets left stored "next" data intact


def test_next_holds_the_terminal_observation():
    env = SMAXEnv("3m", num_envs=E, seed=2, max_steps=SHORT)
    _check_next_is_terminal(env.rollout(30, break_when_any_done=False))


def test_partial_reset_only_resets_masked_envs():
    env = SMAXEnv("3m", num_envs=E, seed=3)
    td = env.reset()
    for _ in range(3):
        td = env.rand_step(td)["next"]
    before = _leaves(env._state)
    mask_before = env.full_action_spec[ACTION_KEY].mask.clone()
    keep = torch.tensor([False, True, False, True])
    td["_reset"] = (~keep).unsqueeze(-1)
    out = env.reset(td)
    after = _leaves(env._state)
    for old, new in zip(before, after):
        assert (old[keep.numpy()] == new[keep.numpy()]).all()  # untouched
    assert (np.array(env._state.state.step) == [0, 3, 0, 3]).all()  # SMAX step counters
    assert not out["done"].any()
    assert (env.full_action_spec[ACTION_KEY].mask[keep] == mask_before[keep]).all()
    assert (out[MASK_KEY] == env.full_action_spec[ACTION_KEY].mask).all()
    assert (out["agents", "observation"][~keep][..., -10] == 1.0).all()  # own health: full
    nxt = env.rand_step(out)["next"]  # stepping goes on from the merged state
    assert (np.array(env._state.state.step) == [1, 4, 1, 4]).all()
    assert nxt["agents", "observation"].shape == (E, 3, 75)


def test_reset_without_mask_resets_every_env():
    env = SMAXEnv("3m", num_envs=E, seed=3)
    td = env.reset()
    for _ in range(2):
        td = env.rand_step(td)["next"]
    env.reset()
    assert (np.array(env._state.state.step) == 0).all()


@pytest.mark.parametrize("num_envs", NUM_ENVS)
def test_time_limit_is_truncation_not_termination(num_envs):
    env = SMAXEnv("3m", num_envs=num_envs, seed=0, max_steps=SHORT)
    assert env.episode_limit == 4
    last, length, _, steps = _first_episodes(env, _stop)
    assert (length == env.episode_limit).all()
    assert last["done"].all() and last["truncated"].all() and not last["terminated"].any()
    assert last["info", "episode_limit"].all() and not last["info", "battle_won"].any()
    assert (last["info", "dead_allies"] == 0).all() and (last["info", "dead_enemies"] == 0).all()
    assert not steps["done"][:, :-1].any() and not steps["info", "episode_limit"][:, :-1].any()
    own_xy = steps["agents", "observation"][..., -9:-7]  # [E, T, N, 2]: allies that stopped
    assert (own_xy[:, -1] == own_xy[:, 0]).all()  # "next" is the terminal obs, not a reset one


def test_win_is_battle_won_and_terminated():
    env = SMAXEnv("3m", num_envs=E, seed=0, enemy_shoots=False)
    last, length, ret, _ = _first_episodes(env, _focus_fire)
    assert (length < env.episode_limit).all()
    assert last["done"].all() and last["terminated"].all() and not last["truncated"].any()
    assert last["info", "battle_won"].all() and not last["info", "episode_limit"].any()
    assert (last["info", "dead_enemies"] == 3).all() and (last["info", "dead_allies"] == 0).all()
    assert (last["reward"] >= 1.0).all()  # won_battle_bonus
    assert torch.allclose(ret, torch.full_like(ret, 2.0), atol=1e-4)  # all damage 1 + bonus 1


def test_loss_is_terminated_not_won_and_dead_units_only_stop():
    env = SMAXEnv("3m", num_envs=E, seed=0)  # allies that never move nor shoot
    last, length, _, steps = _first_episodes(env, _stop)
    assert (length < env.episode_limit).all()
    assert last["terminated"].all() and not last["truncated"].any()
    assert not last["info", "battle_won"].any() and not last["info", "episode_limit"].any()
    assert (last["info", "dead_allies"] == 3).all()
    # alive units can always move; a dead unit's only available action is stop
    mask = steps[MASK_KEY]  # [E, T, N, A]
    stop_only = ~mask[..., :STOP_ACTION].any(-1) & ~mask[..., STOP_ACTION + 1 :].any(-1)
    assert mask[..., STOP_ACTION].all()
    assert (stop_only.sum(-1, keepdim=True) == steps["info", "dead_allies"]).all()


def test_seeding_is_reproducible():
    def run(env):
        torch.manual_seed(0)
        return env.rollout(10, break_when_any_done=False)

    a, b = SMAXEnv("3m", num_envs=E, seed=7), SMAXEnv("3m", num_envs=E, seed=7)
    ra, rb = run(a), run(b)
    assert (ra == rb).all()
    obs0 = ra["agents", "observation"][:, 0]  # [E, N, obs] at t = 0
    assert not (obs0[0] == obs0[1]).all()  # each env has its own key
    other = SMAXEnv("3m", num_envs=E, seed=8).reset()["state"]
    assert not (other == ra["state"][:, 0]).all()
    a.set_seed(7)
    assert (run(a) == ra).all()  # re-seeding replays the same episodes


@pytest.mark.parametrize(
    "scenario, n_agents, n_enemies, n_actions, obs, state, unit_types",
    [
        ("3m", 3, 3, 8, 75, 72, [0] * 6),
        ("2s3z", 5, 5, 10, 127, 120, [2, 2, 3, 3, 3] * 2),
        ("5m_vs_6m", 5, 6, 11, 140, 132, [0] * 11),
        ("3s_vs_3z", 3, 3, 8, 75, 72, [2, 2, 2, 3, 3, 3]),
    ],
)
def test_scenarios(scenario, n_agents, n_enemies, n_actions, obs, state, unit_types):
    env = SMAXEnv(scenario, num_envs=E, seed=0)
    assert (env.n_agents, env.n_enemies, env.n_actions) == (n_agents, n_enemies, n_actions)
    assert env.episode_limit == 101
    td = env.reset()
    assert td["agents", "observation"].shape == (E, n_agents, obs)
    assert td["state"].shape == (E, state)
    assert td[MASK_KEY].shape == (E, n_agents, n_actions)
    n_units = n_agents + n_enemies
    teams = [0.0] * n_agents + [1.0] * n_enemies  # world_state ends with unit teams, then types
    assert td["state"][:, -2 * n_units : -n_units].tolist() == [teams] * E
    assert td["state"][:, -n_units:].tolist() == [[float(t) for t in unit_types]] * E


def test_plain_smax_with_random_enemies():
    env = SMAXEnv("3m", num_envs=E, seed=0, heuristic_enemy=False, max_steps=SHORT)
    td = env.rollout(10, break_when_any_done=False)
    assert td["agents", "observation"].shape == (E, 10, 3, 75)
    assert _available(td[MASK_KEY], td[ACTION_KEY]).all()
    assert td["next", "done"].any()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="Unknown SMAX scenario"):
        SMAXEnv("MMM2")
    with pytest.raises(ValueError, match="num_envs"):
        SMAXEnv("3m", num_envs=0)
    with pytest.raises(ValueError, match="discrete"):
        SMAXEnv("3m", action_type="continuous")


def test_missing_jaxmarl_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "jaxmarl.environments", None)  # import now fails
    with pytest.raises(ImportError, match=r'`jaxmarl.environments`, which is not installed: pip install -e "\.\[smax\]"'):
        SMAXEnv("3m")


def test_state_gives_weapon_cooldowns_as_the_fraction_left_not_raw_seconds_below_zero():
    """JaxMARL's world state lets a unit's weapon cooldown fall 0.5 s per step below 0 while it
    holds fire (to -50 at the time limit), an unbounded input to a mixer's hypernetworks; the
    state gives the fraction of the type's cooldown still to run, as SMAC's state does."""
    steps = {}
    for raw in (False, True):
        env = SMAXEnv("3m", num_envs=E, seed=0, max_steps=30, world_state="jaxmarl" if raw else "smac")
        steps[raw] = _first_episodes(env, _stop)[3]["state"]  # [E, T, 72]: 6 units x 10, teams, types
    units = {raw: s[..., :60].unflatten(-1, (6, 10)) for raw, s in steps.items()}  # [E, T, unit, feature]
    cooldown = 3
    assert units[True][..., cooldown].min() < -5  # the allies that never fire (dead by step 16)
    assert units[False][..., cooldown].min() >= 0 and units[False][..., cooldown].max() <= 1.25
    firing = units[True][..., cooldown] > 0  # the enemies that fire: 0.61 s, a marine's cooldown
    assert firing.any()
    assert torch.allclose(units[False][..., cooldown][firing], units[True][..., cooldown][firing] / 0.61)
    others = [f for f in range(10) if f not in (1, 2, cooldown)]  # positions: the next test
    assert torch.equal(units[False][..., others], units[True][..., others])
    assert torch.equal(steps[False][..., 60:], steps[True][..., 60:])


def test_state_gives_positions_as_offsets_from_the_centre_over_the_map_size():
    """JaxMARL's world state gives positions in map units (0 to 32), the state's largest inputs
    to a mixer's hypernetworks; SMAC's state gives (x - w/2) / w, and a dead unit's row is zero."""
    steps = {}
    for raw in (False, True, "cooldowns"):
        env = SMAXEnv("3m", num_envs=E, seed=0, max_steps=30,
                      world_state="cooldowns" if raw == "cooldowns" else "jaxmarl" if raw else "smac")
        steps[raw] = _first_episodes(env, _stop)[3]["state"]
    units = {raw: s[..., :60].unflatten(-1, (6, 10)) for raw, s in steps.items()}  # [E, T, unit, feature]
    alive = units[True][..., 0] > 0  # health fraction; a dead unit's row is zero
    assert alive.any() and (~alive).any()  # the allies that stop die within the 30 steps
    position = units[False][..., 1:3]
    assert units[True][..., 1:3][alive].max() > 8  # map units
    assert torch.allclose(position[alive], (units[True][..., 1:3][alive] - 16) / 32)  # 3m: a 32 x 32 map
    assert position.abs().max() <= 0.5 and torch.equal(position[~alive], torch.zeros_like(position[~alive]))
    # "cooldowns" (the runs before positions were scaled): JaxMARL's positions, the scaled cooldowns
    assert torch.equal(units["cooldowns"][..., 1:3], units[True][..., 1:3])
    assert torch.equal(units["cooldowns"][..., 3], units[False][..., 3])
