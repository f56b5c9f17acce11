"""FakeStarCraft2Env against SMAC's documented behaviour, and SMACEnv on the fake backend.

Expected values come from SMAC 1.0.0 (oxwhirl/smac): the map sizes under the FOP flags as the real
class's ``get_env_info()`` reports them, and its formulas, rules and errors. The tags in
parentheses are those of fop_modules/envs/smac_fake's docstring ([maps], [sizes], [step], ...).
"""

from __future__ import annotations

import functools
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchrl.envs import ParallelEnv, SerialEnv
from torchrl.envs.utils import check_env_specs

from fop_modules.envs import smac_fake
from fop_modules.envs.smac import SMACEnv, StarCraftNotAvailable
from fop_modules.envs.smac_fake import ConnectError, FakeStarCraft2Env

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "env" / "smac.yaml"
# map: (n_agents, n_enemies, limit, n_actions, obs, state) as SMAC's get_env_info() gives them ([maps])
SIZES = {
    "MMM": (10, 10, 150, 16, 160, 290),
    "MMM2": (10, 12, 180, 18, 176, 322),
    "3s_vs_3z": (3, 3, 150, 9, 36, 54),
    "2c_vs_64zg": (2, 64, 400, 70, 332, 342),
    "3m": (3, 3, 60, 9, 30, 48),
    "2s3z": (5, 5, 120, 11, 80, 120),
    "5m_vs_6m": (5, 6, 70, 12, 55, 98),
}
MAX_REWARD_AFTER_RESET = {"MMM": 1015, "MMM2": 1205, "3s_vs_3z": 680, "2c_vs_64zg": 3080}  # [maps]
ENV_INFO_KEYS = {"state_shape", "obs_shape", "n_actions", "n_agents", "episode_limit", "agent_features", "enemy_features"}


# ---------------------------------------------------------------- policies
def attack_first(avail: list[int]) -> int:
    """Lowest-id available attack, else no-op (dead), else move east, else stop."""
    attacks = [a for a in range(6, len(avail)) if avail[a]]
    if attacks:
        return attacks[0]
    return 0 if avail[0] else (4 if avail[4] else 1)


def passive(avail: list[int]) -> int:
    """Never attacks: stop while alive, no-op when dead."""
    return 0 if avail[0] else 1


def play(env: FakeStarCraft2Env, policy, max_steps: int = 10_000):
    """One episode on the raw game; returns (rewards, terminated flags, infos, masks, actions)."""
    env.reset()
    rewards, terms, infos, masks, actions = [], [], [], [], []
    for _ in range(max_steps):
        avail = env.get_avail_actions()
        act = [policy(a) for a in avail]
        reward, terminated, info = env.step(act)
        rewards.append(reward), terms.append(terminated), infos.append(info)
        masks.append(avail), actions.append(act)
        if terminated:
            break
    return rewards, terms, infos, masks, actions


def td_policy(choose):
    """A TensorDict policy applying ``choose`` (avail list -> action) to every agent."""

    def policy(td):
        mask = td["agents", "action_mask"]  # [*B, N, A]
        flat = mask.reshape(-1, mask.shape[-1]).int().tolist()
        action = torch.tensor([choose(row) for row in flat], dtype=torch.int64)
        td["agents", "action"] = action.reshape(mask.shape[:-1])
        return td

    return policy


def masked_random(seed: int = 0):
    """A TensorDict policy drawing uniformly among the available actions (any batch shape)."""
    gen = torch.Generator().manual_seed(seed)

    def policy(td):
        mask = td["agents", "action_mask"]  # [*B, N, A]
        draw = torch.multinomial(mask.reshape(-1, mask.shape[-1]).float(), 1, generator=gen)
        td["agents", "action"] = draw.reshape(mask.shape[:-1])
        return td

    return policy


@pytest.fixture
def harmless(monkeypatch):
    """No unit deals damage, so every battle runs into the time limit."""
    units = {k: v._replace(dps=0.0) for k, v in smac_fake.UNITS.items()}
    monkeypatch.setattr(smac_fake.units, "UNITS", units)


# ---------------------------------------------------------------- the fake vs SMAC
@pytest.mark.parametrize("map_name", sorted(SIZES))
def test_fake_sizes_match_smac_registry(map_name):
    n_agents, n_enemies, limit, n_actions, obs_dim, state_dim = SIZES[map_name]
    env = FakeStarCraft2Env(map_name=map_name, seed=0)
    info = env.get_env_info()
    assert set(info) == ENV_INFO_KEYS
    assert (info["n_agents"], env.n_enemies, info["episode_limit"]) == (n_agents, n_enemies, limit)
    assert (info["n_actions"], info["obs_shape"], info["state_shape"]) == (n_actions, obs_dim, state_dim)
    assert (env.get_total_actions(), env.get_obs_size(), env.get_state_size()) == (n_actions, obs_dim, state_dim)
    obs, state = env.reset()
    assert isinstance(obs, list) and len(obs) == n_agents
    assert all(o.shape == (obs_dim,) and o.dtype == np.float32 for o in obs)
    assert state.shape == (state_dim,) and state.dtype == np.float32
    avail = env.get_avail_actions()
    assert isinstance(avail, list) and isinstance(avail[0], list) and len(avail[0]) == n_actions
    if map_name in MAX_REWARD_AFTER_RESET:
        assert env.max_reward == MAX_REWARD_AFTER_RESET[map_name]


def test_fake_feature_names_and_flag_formulas():
    assert FakeStarCraft2Env("3s_vs_3z").get_env_info()["agent_features"] == ["health", "energy/cooldown", "rel_x", "rel_y", "shield"]
    assert FakeStarCraft2Env("3s_vs_3z").get_env_info()["enemy_features"] == ["health", "rel_x", "rel_y", "shield"]
    assert FakeStarCraft2Env("MMM").get_env_info()["enemy_features"] == ["health", "rel_x", "rel_y", "type_0", "type_1", "type_2"]
    flags = dict(obs_last_action=True, obs_pathing_grid=True, obs_terrain_height=True,
                 obs_timestep_number=True, state_timestep_number=True)  # fmt: skip
    env = FakeStarCraft2Env("3s_vs_3z", seed=0, **flags)
    assert (env.get_obs_size(), env.get_state_size()) == (72, 55)  # [sizes], verified on SMAC
    obs, state = env.reset()
    assert obs[0].shape == (73,) and obs[0].dtype == np.float64  # SMAC's timestep quirk
    assert state.shape == (55,)
    env = FakeStarCraft2Env("3m", obs_instead_of_state=True, seed=0)
    assert env.get_state_size() == 3 * 30 and env.reset()[1].shape == (90,)


def test_fake_before_reset_behaves_like_smac():
    env = FakeStarCraft2Env("3m")
    with pytest.raises(KeyError):
        env.get_obs()
    with pytest.raises(KeyError):
        env.get_avail_actions()
    assert not env.get_state().any()
    env.close()  # no-op
    with pytest.raises(AttributeError):
        env.save_replay()
    with pytest.raises(ZeroDivisionError):
        env.get_stats()
    with pytest.raises(KeyError):
        FakeStarCraft2Env("not_a_map")
    assert FakeStarCraft2Env("3m", seed=11).seed() == 11


def test_fake_observation_layout_mmm():
    env = FakeStarCraft2Env("MMM", seed=0)
    obs, state = env.reset()
    # agents sorted by type: 0-1 marauders, 2-8 marines, 9 medivac; own block ends with the type one-hot
    own_types = [tuple(o[-3:]) for o in obs]
    assert own_types == [(1, 0, 0)] * 2 + [(0, 1, 0)] * 7 + [(0, 0, 1)]
    avail = env.get_avail_actions()
    assert all(a[0] == 0 and a[1] == 1 for a in avail)  # alive: no no-op, stop always
    medivac = avail[9]
    assert medivac[6 + 9] == 0  # cannot heal itself
    assert any(medivac[6:16])  # allies within 6 can be healed at the start
    assert not any(any(a[6:]) for a in avail[:9])  # enemies spawn 8 away: out of shooting range
    # last action enters the state: n_agents x n_actions one-hot at the end
    env.step([1] * 10)
    last = env.get_state()[-10 * 16 :].reshape(10, 16)
    assert (last[:, 1] == 1).all() and last.sum() == 10


def test_fake_dead_agents_only_noop_and_invalid_actions_raise():
    env = FakeStarCraft2Env("3m", seed=0)
    env.reset()
    with pytest.raises(AssertionError, match="Agent 0 cannot perform action 6"):
        env.step([6, 1, 1])  # enemy 0 is out of range at the start
    with pytest.raises(AssertionError, match="Agent 1 cannot perform action 0"):
        env.step([1, 0, 1])  # no-op while alive
    _, _, infos, masks, actions = play(env, passive)
    assert infos[-1]["dead_allies"] == 3 and not infos[-1]["battle_won"]
    dead_seen = 0
    for avail, act in zip(masks, actions):
        for a, chosen in zip(avail, act):
            if a[0]:
                dead_seen += 1
                assert a == [1] + [0] * 8 and chosen == 0
            else:
                assert a[1] == 1
    assert dead_seen > 0
    assert not any(o.any() for o in env.get_obs())  # dead agents observe zeros
    with pytest.raises(AssertionError, match="Agent 2 cannot perform action 1"):
        env.step([0, 0, 1])  # a dead agent cannot stop


@pytest.mark.parametrize("continuing_episode", [False, True])
def test_fake_time_limit(harmless, continuing_episode):
    env = FakeStarCraft2Env("3m", seed=0, continuing_episode=continuing_episode)
    rewards, terms, infos, _, _ = play(env, attack_first)
    assert len(terms) == 60 and terms[-1] and not any(terms[:-1])
    assert ("episode_limit" in infos[-1]) == continuing_episode  # [step]: only with continuing_episode
    assert not any("episode_limit" in i for i in infos[:-1])
    assert not infos[-1]["battle_won"] and (env.timeouts, env.battles_game) == (1, 1)
    assert sum(rewards) == 0


def test_fake_win_loss_and_reward_shaping():
    env = FakeStarCraft2Env("3m", seed=0)
    rewards, _, infos, _, _ = play(env, attack_first)
    assert infos[-1]["battle_won"] and infos[-1]["dead_enemies"] == 3
    assert not any(i["battle_won"] for i in infos[:-1])
    assert all(isinstance(r, float) for r in rewards)
    assert sum(rewards) == pytest.approx(20.0)  # a perfect battle sums to reward_scale_rate ([step])
    assert (env.battles_won, env.battles_game, env.get_stats()["win_rate"]) == (1, 1, 1.0)
    rewards, _, infos, _, _ = play(env, passive)
    assert not infos[-1]["battle_won"] and infos[-1]["dead_allies"] == 3 and sum(rewards) == 0
    # unscaled: damage + 10 per kill + 200 for the win = max_reward before scaling
    env = FakeStarCraft2Env("3m", seed=0, reward_scale=False)
    rewards, *_ = play(env, attack_first)
    assert sum(rewards) == pytest.approx(env.max_reward) and env.max_reward == 3 * 45 + 3 * 10 + 200
    env = FakeStarCraft2Env("3m", seed=0, reward_sparse=True, reward_scale=False)
    rewards, *_ = play(env, attack_first)
    assert rewards[-1] == 1 and sum(rewards[:-1]) == 0
    env = FakeStarCraft2Env("3m", seed=0, reward_only_positive=False, reward_scale=False)
    rewards, *_ = play(env, passive)
    assert sum(rewards) == pytest.approx(-(3 * 45 + 3 * 10) * 0.5)  # negative_scale x (HP + deaths)


def test_fake_attacking_wins_more_than_passive():
    def wins(policy, map_name):
        env = FakeStarCraft2Env(map_name, seed=1)
        return sum(play(env, policy)[2][-1]["battle_won"] for _ in range(10))

    assert wins(attack_first, "3m") >= 8 and wins(passive, "3m") == 0
    assert wins(attack_first, "8m") >= 6 and wins(passive, "8m") == 0


def test_fake_is_deterministic_given_seed():
    def trace(seed):
        env, rng = FakeStarCraft2Env("2s3z", seed=seed), np.random.default_rng(0)
        out = []
        for _ in range(3):
            env.reset()
            terminated = False
            while not terminated:
                act = [int(rng.choice(np.flatnonzero(a))) for a in env.get_avail_actions()]
                reward, terminated, _ = env.step(act)
                out.append((reward, env.get_state().tobytes()))
        return out

    assert trace(4) == trace(4)
    assert trace(4) != trace(5)


def test_fake_relaunches_on_every_reset_before_the_first_episode_ends():
    env = FakeStarCraft2Env("3m", seed=0)
    env.reset()
    env.reset()  # SMAC's quirk ([step]): a second process, the enemies' HP counted twice
    assert env.n_launches == 2 and env.max_reward == 230 + 2 * 135
    play(env, passive)
    env.reset()
    assert env.n_launches == 3 and env.max_reward == 230 + 3 * 135  # play() reset once more
    env.reset()  # an episode has ended: no relaunch any more
    assert env.n_launches == 3


def test_fake_crash_hooks():
    env = FakeStarCraft2Env("3m", seed=0, crash_on_step=3)
    env.reset()
    assert env.step([1, 1, 1])[1:] == (False, {"battle_won": False, "dead_allies": 0, "dead_enemies": 0})
    env.step([1, 1, 1])
    assert env.step([1, 1, 1]) == (0, True, {})  # [step] crash path
    assert (env.force_restarts, env.battles_game, env.n_launches) == (1, 0, 2)
    env.failed_launches = 1
    with pytest.raises(ConnectError):
        env.reset()  # no episode has ended, so reset launches again ([step]), and that launch fails


def test_fake_crash_hooks_raise_pysc2_errors():
    env = FakeStarCraft2Env("3m", seed=0, crash_on_step=2)
    env.reset()
    env.step([1, 1, 1])
    env.failed_launches = 1  # the relaunch inside step's full_restart fails: it escapes step ([crash])
    with pytest.raises(ConnectError, match="Is it up"):
        env.step([1, 1, 1])
    assert not issubclass(ConnectError, ConnectionError)  # not the builtin, as in pysc2
    with pytest.raises(ConnectError):
        FakeStarCraft2Env("3m", failed_launches=1).reset()


# ---------------------------------------------------------------- the adapter
@pytest.mark.parametrize(
    "map_name, kwargs",
    [("3m", {}), ("MMM", {}), ("2c_vs_64zg", {}), ("3s_vs_3z", {"obs_timestep_number": True, "obs_instead_of_state": True})],
)
def test_adapter_specs(map_name, kwargs):
    env = SMACEnv(map_name, backend="fake", seed=0, **kwargs)
    check_env_specs(env)
    n_agents, _, limit, n_actions, obs_dim, state_dim = SIZES[map_name]
    if kwargs:  # the reserved own-block slot plus the appended timestep ([sizes] quirk)
        obs_dim += 2
        state_dim = n_agents * obs_dim
    assert (env.n_agents, env.n_actions, env.episode_limit) == (n_agents, n_actions, limit)
    assert env.batch_size == torch.Size([])
    obs_spec = env.full_observation_spec
    assert obs_spec["agents", "observation"].shape == (n_agents, obs_dim)
    assert obs_spec["agents", "observation"].dtype == torch.float32
    assert obs_spec["agents", "action_mask"].shape == (n_agents, n_actions)
    assert obs_spec["agents", "action_mask"].dtype == torch.bool
    assert obs_spec["state"].shape == (state_dim,) and obs_spec["state"].dtype == torch.float32
    action = env.full_action_spec["agents", "action"]
    assert action.shape == (n_agents,) and action.dtype == torch.int64 and action.n == n_actions
    assert env.full_reward_spec["reward"].shape == (1,)
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == (1,) and env.full_done_spec[key].dtype == torch.bool
    info = obs_spec["info"]
    assert {k: (v.shape, v.dtype) for k, v in info.items()} == {
        "battle_won": ((1,), torch.bool),
        "episode_limit": ((1,), torch.bool),
        "dead_allies": ((1,), torch.int64),
        "dead_enemies": ((1,), torch.int64),
    }


@pytest.mark.parametrize("map_name", ["3m", "MMM"])
def test_adapter_random_rollout_uses_available_actions_only(map_name):
    env = SMACEnv(map_name, backend="fake", seed=0)
    check_env_specs(env)  # resets twice and stops mid-episode: must not relaunch SMAC's way
    td = env.rollout(400, break_when_any_done=False)  # the spec's mask drives rand_action
    mask, action = td["agents", "action_mask"], td["agents", "action"]
    assert mask.gather(-1, action.unsqueeze(-1)).all()
    dead = mask[..., 0]  # [T, N]: only no-op available
    assert dead.any() and (action[dead] == 0).all() and (action[~dead] != 0).all()
    assert td["next", "done"].sum() >= 3  # several episodes
    assert env.game.n_launches == 1 and env.game.max_reward == {"3m": 365, "MMM": 1015}[map_name]


@pytest.mark.parametrize("continuing_episode", [False, True])
def test_adapter_time_limit_is_truncation(harmless, continuing_episode):
    env = SMACEnv("3m", backend="fake", seed=0, continuing_episode=continuing_episode)
    td = env.rollout(200, policy=td_policy(attack_first))
    assert td.shape == (60,)
    nxt = td["next"]
    assert nxt["truncated"][-1].item() and nxt["done"][-1].item() and not nxt["terminated"][-1].item()
    assert nxt["info", "episode_limit"][-1].item() and not nxt["info", "battle_won"][-1].item()
    assert not nxt["done"][:-1].any() and not nxt["info", "episode_limit"][:-1].any()


def test_adapter_terminated_on_win_and_loss():
    env = SMACEnv("3m", backend="fake", seed=0)
    td = env.rollout(200, policy=td_policy(attack_first))
    nxt = td["next"][-1]
    assert nxt["terminated"].item() and nxt["done"].item() and not nxt["truncated"].item()
    assert nxt["info", "battle_won"].item() and nxt["info", "dead_enemies"].item() == 3
    assert not nxt["info", "episode_limit"].item()
    assert td["next", "reward"].sum().item() == pytest.approx(20.0)
    assert not td["next", "info", "battle_won"][:-1].any()
    td = env.rollout(200, policy=td_policy(passive))
    nxt = td["next"][-1]
    assert nxt["terminated"].item() and not nxt["truncated"].item()
    assert not nxt["info", "battle_won"].item() and nxt["info", "dead_allies"].item() == 3
    assert td["next", "info", "dead_allies"].diff(dim=0).ge(0).all()  # counts, never decrease


def test_adapter_rejects_unavailable_actions():
    env = SMACEnv("3m", backend="fake", seed=0)
    td = env.reset()
    td["agents", "action"] = torch.tensor([1, 6, 1])  # enemy 0 is out of range at the start
    with pytest.raises(ValueError, match=r"unavailable actions \[6\] for agents \[1\]"):
        env.step(td)
    td["agents", "action"] = torch.tensor([1, 1, 9])
    with pytest.raises(ValueError, match="unavailable"):
        env.step(td)


def test_adapter_restarts_after_a_crash(caplog):
    env = SMACEnv("3m", backend="fake", seed=0, crash_on_step=3)
    td = env.reset()
    for _ in range(2):
        td = env.step(td.set(("agents", "action"), torch.ones(3, dtype=torch.int64)))["next"]
    first_game = env.game
    with caplog.at_level(logging.WARNING, logger="fop_modules.envs.smac"):
        out = env.step(td.clone().set(("agents", "action"), torch.ones(3, dtype=torch.int64)))
    nxt = out["next"]
    assert nxt["truncated"].item() and nxt["done"].item() and not nxt["terminated"].item()
    assert nxt["reward"].item() == 0 and not nxt["info", "battle_won"].item()
    assert torch.equal(nxt["agents", "observation"], td["agents", "observation"])  # last valid obs
    assert torch.equal(nxt["state"], td["state"])
    assert env.restarts == 1 and env.game is not first_game
    assert "relaunching" in caplog.text and "(0, True, {})" in caplog.text
    td = env.reset()  # a clean restart on the new game
    assert env.game.n_launches == 1 and td["agents", "action_mask"][:, 1].all()
    assert td["agents", "observation"].abs().sum() > 0
    # the new game inherits crash_on_step=3: crashes recur, each after good steps, never give up
    rollout = env.rollout(30, policy=td_policy(passive), break_when_any_done=False)
    assert env.restarts == 1 + 10 and rollout["next", "truncated"].sum() == 10


def test_adapter_restarts_when_the_relaunch_raises():
    env = SMACEnv("3m", backend="fake", seed=0, crash_on_step=2)
    td = env.reset()
    env.game.failed_launches = 1  # step's full_restart raises ConnectError ([crash])
    td = env.step(td.set(("agents", "action"), torch.ones(3, dtype=torch.int64)))["next"]
    out = env.step(td.clone().set(("agents", "action"), torch.ones(3, dtype=torch.int64)))["next"]
    assert out["truncated"].item() and env.restarts == 1
    env.reset()
    assert env.game.n_launches == 1
    env = SMACEnv("3m", backend="fake", seed=0)
    env.game.failed_launches = 1  # the first launch fails: retried on a new game
    env.reset()
    assert env.restarts == 1 and env.game.n_launches == 1


def test_adapter_gives_up_after_consecutive_failures():
    env = SMACEnv("3m", backend="fake", seed=0, failed_launches=1, max_consecutive_failures=3)
    with pytest.raises(RuntimeError, match="failed 3 times in a row") as err:
        env.reset()  # every re-created game fails its launch too
    assert isinstance(err.value.__cause__, ConnectError)
    assert env.restarts == 2
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        SMACEnv("3m", backend="fake", max_consecutive_failures=0)


def test_adapter_seed():
    def run(seed):
        env = SMACEnv("2s3z", backend="fake", seed=0)
        env.set_seed(seed)
        assert env.game.seed() == seed
        return env.rollout(300, policy=td_policy(attack_first), break_when_any_done=False)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a["next", "state"], b["next", "state"])
    assert not torch.equal(a["next", "state"], c["next", "state"])


@pytest.mark.parametrize("batched", [SerialEnv, pytest.param(ParallelEnv, marks=pytest.mark.slow)])
def test_adapter_in_batched_envs(batched):
    env = batched(2, functools.partial(SMACEnv, "3m", backend="fake"))
    try:
        env.set_seed(0)
        td = env.rollout(80, policy=masked_random(0), break_when_any_done=False)
        assert td.shape == (2, 80)
        assert td["agents", "observation"].shape == (2, 80, 3, 30) and td["next", "state"].shape == (2, 80, 48)
        assert td["agents", "action_mask"].gather(-1, td["agents", "action"].unsqueeze(-1)).all()
        assert (td["next", "done"].sum(1) >= 1).all()
        assert not torch.equal(td["agents", "observation"][0], td["agents", "observation"][1])  # seeds differ
    finally:
        env.close()


def test_config_instantiates_on_the_fake_backend():
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"seed": 5, "env": OmegaConf.load(CONFIG)})
    assert cfg.env.backend == "sc2" and cfg.env.map_name == "MMM"
    env = instantiate(cfg.env, backend="fake")
    assert isinstance(env, SMACEnv) and env.n_agents == 10 and env.game.seed() == 5
    game = env.game
    assert (game.difficulty, game._step_mul, game.reward_win, game.reward_death_value) == ("7", 8, 200, 10)
    assert (game.reward_negative_scale, game.reward_only_positive, game.reward_scale_rate) == (0.5, True, 20)
    assert game.state_last_action and not game.obs_last_action and not game.continuing_episode


# ---------------------------------------------------------------- StarCraft II missing
def _fake_smac_package(monkeypatch, with_env: bool) -> None:
    smac = types.ModuleType("smac")
    monkeypatch.setitem(sys.modules, "smac", smac)
    monkeypatch.delitem(sys.modules, "smac.env", raising=False)
    if with_env:
        smac.__path__ = []  # a package
        env_module = types.ModuleType("smac.env")
        env_module.StarCraft2Env = FakeStarCraft2Env
        monkeypatch.setitem(sys.modules, "smac.env", env_module)


def _install_sc2(root: Path, maps: tuple[str, ...] = ()) -> None:
    (root / "Versions" / "Base75689").mkdir(parents=True)
    (root / "Maps" / "SMAC_Maps").mkdir(parents=True)
    for name in maps:
        (root / "Maps" / "SMAC_Maps" / f"{name}.SC2Map").write_bytes(b"")


def test_starcraft_missing_everything(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "smac", None)  # import smac fails
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(StarCraftNotAvailable) as err:
        SMACEnv("MMM", backend="sc2")
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert "pip install git+https://github.com/oxwhirl/smac.git" in msg
    assert "StarCraft II 4.10" in msg and "SC2PATH" in msg and str(tmp_path / "Versions") in msg
    assert str(tmp_path / "Maps" / "SMAC_Maps" / "MMM.SC2Map") in msg and "SMAC_Maps.zip" in msg
    assert "backend='fake'" in msg


def test_starcraft_missing_detects_smac3(monkeypatch, tmp_path):
    _fake_smac_package(monkeypatch, with_env=False)  # `import smac` works, `smac.env` does not
    _install_sc2(tmp_path, maps=("MMM",))
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(StarCraftNotAvailable, match="SMAC3") as err:
        SMACEnv("MMM", backend="sc2")
    msg = str(err.value)
    assert "pip uninstall smac" in msg and "StarCraft II 4.10" not in msg and ".SC2Map" not in msg


def test_starcraft_missing_names_only_the_map(monkeypatch, tmp_path):
    _fake_smac_package(monkeypatch, with_env=True)
    _install_sc2(tmp_path, maps=("3m",))
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(StarCraftNotAvailable) as err:
        SMACEnv("MMM2", backend="sc2")
    msg = str(err.value)
    assert "MMM2.SC2Map" in msg and "pip install" not in msg and "StarCraft II 4.10" not in msg


def test_starcraft_default_sc2path(monkeypatch, tmp_path):
    _fake_smac_package(monkeypatch, with_env=True)
    monkeypatch.delenv("SC2PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(StarCraftNotAvailable, match="StarCraftII") as err:
        SMACEnv("3m", backend="sc2")
    assert str(tmp_path / "StarCraftII" / "Versions") in str(err.value)


def test_sc2_backend_runs_when_everything_is_installed(monkeypatch, tmp_path):
    _fake_smac_package(monkeypatch, with_env=True)  # smac.env.StarCraft2Env is the fake here
    _install_sc2(tmp_path, maps=("3m",))
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    env = SMACEnv("3m", backend="sc2", seed=0, difficulty="7")
    assert isinstance(env.game, FakeStarCraft2Env)
    check_env_specs(env)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        SMACEnv("3m", backend="starcraft")
