"""QMIX, VDN and MASAC with GRU agents on replayed episodes (fop_modules.episode_losses).

Shapes, gradients, action masks, the TD target on a hand-computed case (double Q and not, padded
steps left out), the loss's hidden states against the acting ones, and short recipe runs on SMAX
and the stand-in StarCraft with `algorithm=<name>` and no other change to the experiment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import QValueModule, VDNMixer

from fop_modules import baselines
from fop_modules.baselines import MASACConfig, ValueDecompositionConfig
from fop_modules.episode_losses import EpisodeQMixerLoss
from fop_modules.slices import transitions
from fop_modules.recurrent import find_encoder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import schema  # noqa: E402
import train  # noqa: E402  (the recipe module)

OBS, ACTION, MASK = ("agents", "observation"), ("agents", "action"), ("agents", "action_mask")
N, OBS_DIM, A, H = 3, 5, 4, 8


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def _fake_smac_env():
    cfg = _compose(["+experiment=smac_3s_vs_3z", "env.backend=fake", "algorithm=qmix"])
    return train.make_env(cfg.env, schema.validate(cfg).algorithm)


def _episode_batch(B: int = 4, T: int = 6, lengths=(6, 3, 1, 5), seed: int = 0) -> TensorDict:
    """[B, T] slices of random steps, slice b real over its first lengths[b] steps (the rest
    padding, as SliceSampler pads), random masks with at least one available action."""
    g = torch.Generator().manual_seed(seed)
    mask_shape = (B, T + 1, N, A)
    masks = torch.rand(mask_shape, generator=g) < 0.5
    masks[..., 0] = True  # no-op always available
    obs = torch.randn(B, T + 1, N, OBS_DIM, generator=g)
    actions = torch.stack([torch.multinomial(m.reshape(-1, A).float(), 1, generator=g).reshape(B, T + 1, N)
                           for m in [masks]])[0]
    last = torch.nn.functional.one_hot(actions, A).float()
    last = torch.cat([torch.zeros(B, 1, N, A), last[:, :-1]], 1)  # the action before each step
    valid = torch.arange(T) < torch.tensor(lengths).unsqueeze(-1)  # [B, T]
    def step(t):
        return {OBS: obs[:, t], ("agents", "last_action"): last[:, t], MASK: masks[:, t],
                "state": obs[:, t].flatten(-2)}
    root, nxt = step(slice(0, T)), step(slice(1, T + 1))
    terminated = torch.zeros(B, T, 1, dtype=torch.bool)
    batch = TensorDict({
        **root, ACTION: actions[:, :T], "rnn_hidden": torch.zeros(B, T, N, H),
        "is_init": (torch.arange(T) == 0).expand(B, T).unsqueeze(-1).clone(),
        ("collector", "mask"): valid,
        "next": TensorDict({**nxt, "reward": torch.randn(B, T, 1, generator=g),
                            "done": terminated.clone(), "terminated": terminated}, [B, T]),
    }, [B, T])
    for key in ("agents", ("next", "agents")):  # [B, T, N], as the envs' agent group
        batch.get(key).batch_size = torch.Size([B, T, N])
    return batch


class _Specs:
    """The few spec reads the builders make, for N agents of OBS_DIM features and A actions."""

    def __init__(self):
        from torchrl.data import Categorical, Composite, Unbounded
        agents = Composite({"observation": Unbounded((N, OBS_DIM)), "action_mask": Categorical(2, (N, A), dtype=torch.bool)},
                           shape=(N,))
        self.full_observation_spec = Composite({"agents": agents, "state": Unbounded((N * OBS_DIM,))})
        action = Composite({"agents": Composite({"action": Categorical(A, (N,))}, shape=(N,))})
        self.full_action_spec = self.full_action_spec_unbatched = action


def _batch(baseline, **kwargs) -> TensorDict:
    """An episode batch as the module stores it (MASAC's per-agent reward copies included)."""
    batch = _episode_batch(**kwargs)
    return baseline.process_batch(batch) if baseline.process_batch is not None else batch


def _recurrent(name: str):
    cfg = {"masac": MASACConfig(hidden=[16], recurrent=True, rnn_hidden=H),
           "qmix": ValueDecompositionConfig(recurrent=True, rnn_hidden=H, mixing_embed_dim=8),
           "vdn": ValueDecompositionConfig(name="vdn", mixer="vdn", recurrent=True, rnn_hidden=H)}[name]
    return cfg.build(_Specs(), 1000)


# ---------------------------------------------------------------- shapes, gradients, masks
@pytest.mark.parametrize("name", ["qmix", "vdn", "masac"])
def test_gru_agents_act_step_by_step_and_learn_from_episode_slices(name):
    baseline = _recurrent(name)
    assert find_encoder(baseline.policy) is not None
    step = _episode_batch()[:, 0].exclude("next", ("collector", "mask"), ACTION)  # [B]: one step in a collector
    out = baseline.policy(step)
    assert out[ACTION].shape == (4, N) and out["next", "rnn_hidden"].shape == (4, N, H)
    losses = baseline.loss(_batch(baseline))
    for objective in baseline.objectives.values():
        assert losses[objective.loss_key].shape == () and torch.isfinite(losses[objective.loss_key])


@pytest.mark.parametrize("name", ["qmix", "vdn", "masac"])
def test_gradients_reach_the_gru_and_only_the_objectives_own_parameters(name):
    baseline = _recurrent(name)
    out = baseline.loss(_batch(baseline))
    every = {id(p): p for o in baseline.objectives.values() for g in o.param_groups for p in g["params"]}
    encoder = find_encoder(baseline.policy)
    gru_ids = {id(p) for p in (baseline.loss.local_value_network_params if name != "masac"
                               else baseline.loss.actor_network_params).values(True, True)}
    reached_gru = False
    for objective in baseline.objectives.values():
        own = {id(p) for g in objective.param_groups for p in g["params"]}
        grads = torch.autograd.grad(out[objective.loss_key], list(every.values()), retain_graph=True, allow_unused=True)
        reached = {i for i, g in zip(every, grads) if g is not None and g.abs().sum() > 0}
        assert reached and reached <= own, objective.loss_key
        reached_gru |= bool(reached & gru_ids)
    assert reached_gru and encoder is not None
    targets = [p for key in ("target_local_value_network_params", "target_mixer_network_params")
               if hasattr(baseline.loss, key) for p in getattr(baseline.loss, key).values(True, True)
               if p.requires_grad]
    loss = sum(out[o.loss_key] for o in baseline.objectives.values())
    if targets:  # the TD target carries no graph into the target networks
        assert all(g is None for g in torch.autograd.grad(loss, targets, allow_unused=True))


@pytest.mark.parametrize("name", ["qmix", "vdn"])
def test_no_unavailable_action_is_ever_chosen_exploring_or_greedy(name):
    baseline = _recurrent(name)
    step = _episode_batch(B=64, T=1, lengths=[1] * 64, seed=3)[:, 0].exclude("next", ("collector", "mask"), ACTION)
    mask = step[MASK]
    baseline.exploration.eps.fill_(1.0)  # every action random
    for kind in (ExplorationType.RANDOM, ExplorationType.DETERMINISTIC):
        with set_exploration_type(kind):
            for _ in range(20):
                action = baseline.policy(step.clone())[ACTION]
                assert mask.gather(-1, action.unsqueeze(-1)).all(), kind
    with set_exploration_type(ExplorationType.RANDOM):  # and the random choice covers what is available
        seen = torch.stack([baseline.policy(step.clone())[ACTION] for _ in range(50)])  # [50, B, N]
    assert torch.equal(torch.nn.functional.one_hot(seen, A).any(0).bool(), mask)


def test_greedy_evaluation_is_the_masked_argmax_of_q_i():
    baseline = _recurrent("qmix")
    step = _episode_batch(B=16, T=1, lengths=[1] * 16, seed=5)[:, 0].exclude("next", ("collector", "mask"), ACTION)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = baseline.policy(step.clone())
    q = out["agents", "action_value"].masked_fill(~step[MASK], -torch.inf)
    assert torch.equal(out[ACTION], q.argmax(-1))


# ---------------------------------------------------------------- the TD target by hand
def _table_loss(double_q: bool) -> EpisodeQMixerLoss:
    """VDN over 2 agents whose Q_i(s, .) is a table row: observation = one-hot of s in {0, 1}.
    Online Q(s0) = [0.5, 1, -1], Q(s1) = [1, 5, 2]; target Q^-(s1) = [3, 0, 4]."""
    q_net = TensorDictModule(nn.Linear(2, 3, bias=False), in_keys=[OBS], out_keys=[("agents", "action_value")])
    local = TensorDictSequential(q_net, QValueModule(
        action_space="categorical", action_value_key=("agents", "action_value"), action_mask_key=MASK,
        out_keys=[ACTION, ("agents", "action_value"), ("agents", "chosen_action_value")]))
    mixer = TensorDictModule(VDNMixer(n_agents=2, device="cpu"), in_keys=[("agents", "chosen_action_value")],
                             out_keys=["chosen_action_value"])
    loss = EpisodeQMixerLoss(local, mixer, num_actions=3, double_q=double_q, action_space="categorical")
    loss.make_value_estimator(gamma=0.5)
    (online,) = loss.local_value_network_params.values(True, True)
    (target,) = loss.target_local_value_network_params.values(True, True)
    online.data.copy_(torch.tensor([[0.5, 1.0], [1.0, 5.0], [-1.0, 2.0]]))  # [A, S]: column s is Q(s)
    target.data.copy_(torch.tensor([[9.0, 3.0], [9.0, 0.0], [9.0, 4.0]]))
    return loss


def _table_batch(terminated: bool = False, B: int = 1) -> TensorDict:
    s0, s1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    next_mask = torch.tensor([[True, True, True], [True, False, True]])  # agent 1 cannot play 1 at s1
    return TensorDict({
        OBS: s0.expand(B, 2, 2).clone(), MASK: torch.ones(B, 2, 3, dtype=torch.bool),
        ACTION: torch.tensor([0, 1]).expand(B, 2).clone(),
        "next": TensorDict({OBS: s1.expand(B, 2, 2).clone(), MASK: next_mask.expand(B, 2, 3).clone(),
                            "reward": torch.ones(B, 1), "done": torch.full((B, 1), terminated),
                            "terminated": torch.full((B, 1), terminated)}, [B]),
    }, [B])


@pytest.mark.parametrize(("double_q", "expected"), [
    # Q_tot(s0, (0, 1)) = 0.5 + 1 = 1.5; r = 1, gamma = 0.5
    # double Q: online argmax at s1 over the available actions: agent 0 -> 1 (5), agent 1 -> 2 (2,
    #   its 5 is unavailable); target values Q^-(s1, 1) + Q^-(s1, 2) = 0 + 4: y = 1 + 0.5 * 4 = 3
    (True, (1.5 - 3.0) ** 2),
    # target max over the available actions: 4 + 4 = 8: y = 1 + 0.5 * 8 = 5
    (False, (1.5 - 5.0) ** 2),
])
def test_td_target_by_hand(double_q, expected):
    loss = _table_loss(double_q)
    assert loss(_table_batch())["loss"].item() == pytest.approx(expected)
    assert loss(_table_batch(terminated=True))["loss"].item() == pytest.approx((1.5 - 1.0) ** 2)  # y = r


def test_padded_steps_are_left_out_of_the_loss():
    """Two slices of two steps, the second padded after one: the loss is the mean over the 3 real
    steps; a padded step's reward (1000) changes nothing."""
    loss = _table_loss(double_q=True)
    rows = _table_batch(B=4)
    rows["next", "reward"] = torch.tensor([[1.0], [2.0], [3.0], [1000.0]])
    batch = rows.reshape(2, 2)
    batch["collector", "mask"] = torch.tensor([[True, True], [True, False]])
    expected = sum((1.5 - (r + 2.0)) ** 2 for r in (1.0, 2.0, 3.0)) / 3
    assert loss(batch)["loss"].item() == pytest.approx(expected)


# ---------------------------------------------------------------- hidden states
@pytest.mark.parametrize("name", ["qmix", "masac"])
def test_replayed_hidden_states_are_the_acting_ones(name):
    """One episode of the stand-in StarCraft played step by step by the GRU agents, replayed as
    a [1, T] slice: the loss's Q_i (QMIX) or policy logits (MASAC) at every step equal those the
    agents acted on (1e-5)."""
    torch.manual_seed(0)
    cfg = _compose(["+experiment=smac_3s_vs_3z", "env.backend=fake", f"algorithm={name}"])
    config = schema.validate(cfg).algorithm
    env = train.make_env(cfg.env, config)
    baseline = config.build(env, 1000)
    env.set_seed(0)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        episode = env.rollout(200, baseline.policy)  # [T]: up to the first done
    assert episode["next", "done"][-1].item() and len(episode) > 3
    loss = baseline.loss
    network, params = ((loss.local_value_network, loss.local_value_network_params) if name != "masac"
                       else (loss.actor_network, loss.actor_network_params))
    key = ("agents", "action_value") if name != "masac" else ("agents", "logits")
    with torch.no_grad():
        rows, _ = transitions(loss, episode.unsqueeze(0), network, params)
        with find_encoder(network).precomputed(), params.to_module(network):
            replayed = network(rows.clone())[key]
    torch.testing.assert_close(replayed, episode[key], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- configs and recipe runs
SMAX = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("smax_*.yaml") if p.stem != "smax_authors")


@pytest.mark.parametrize("experiment", [*SMAX, "smac_3s_vs_3z"])
@pytest.mark.parametrize("algorithm", ["qmix", "vdn", "masac"])
def test_the_sequence_experiments_take_a_baseline_with_no_other_override(algorithm, experiment):
    cfg = _compose([f"+experiment={experiment}", f"algorithm={algorithm}"])
    config = schema.validate(cfg).algorithm
    assert config.recurrent and config.rnn_hidden == 64 and cfg.collect.sequence_length == cfg.episode_limit
    if algorithm != "masac":  # PyMARL's QMIX settings, cited in configs/algorithm/qmix.yaml
        filled = config.resolved(cfg.collect.total_frames)
        assert (filled.anneal_frames, filled.hypernet_embed, filled.double_q, filled.mixer_init_scale) == (
            50_000, 64, True, 0.001)
        assert (cfg.optim.optimizer._target_, cfg.optim.target_update._target_,
                cfg.optim.target_update.value_network_update_interval) == (
            "torch.optim.RMSprop", "torchrl.objectives.HardUpdate", 200)
        assert (cfg.collect.batch_size, cfg.collect.buffer_size // cfg.episode_limit) == (32, 5000)


def test_mlp_baselines_keep_transitions_and_benchmarl_settings():
    cfg = _compose(["+experiment=matrix_game", "algorithm=qmix"])
    config = schema.validate(cfg).algorithm
    filled = config.resolved(10_000)
    assert not config.recurrent and (filled.anneal_frames, filled.hypernet_embed, filled.double_q,
                                     filled.mixer_init_scale) == (3333, 0, False, 0.0)
    with pytest.raises(schema.ConfigError, match=r"collect.sequence_length=null or algorithm.recurrent=true"):
        schema.validate(_compose(["+experiment=smax_3m", "algorithm=vdn", "algorithm.recurrent=false"]))
    with pytest.raises(schema.ConfigError, match=r"set collect.sequence_length"):
        schema.validate(_compose(["algorithm=qmix", "algorithm.recurrent=true"]))


SMOKE = ["collect.total_frames=800", "collect.warmup_frames=400", "collect.batch_size=4",
         "evaluation.interval=0", "evaluation.episodes=2", "trainer.enable_progress_bar=false",
         "trainer.log_every_n_steps=1"]


@pytest.mark.parametrize("algorithm", ["qmix", "vdn", "masac"])
def test_recipe_runs_each_baseline_on_the_stand_in_starcraft(algorithm, tmp_path):
    cfg = _compose(["+experiment=smac_3s_vs_3z", "env.backend=fake", f"algorithm={algorithm}", *SMOKE,
                    "collect.frames_per_batch=50", "collect.updates_per_batch=1",
                    "collect.updates_per_episode=0"])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["updates"] > 0 and 0 <= summary["final_eval_win_rate"] <= 1


@pytest.mark.parametrize("algorithm", ["qmix", "vdn", "masac"])
def test_recipe_runs_each_baseline_on_smax(algorithm, tmp_path):
    pytest.importorskip("jaxmarl")  # the [smax] extra
    cfg = _compose(["+experiment=smax_3m", f"algorithm={algorithm}", *SMOKE, "collect.updates_per_batch=1", "collect.updates_per_episode=0"])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["updates"] > 0 and 0 <= summary["final_eval_win_rate"] <= 1


def test_small_mixer_init_starts_q_tot_near_zero_on_an_unnormalised_state_and_still_trains_the_agents():
    """SMAX's world state reaches about 25: with PyTorch's init PyMARL's mixer starts Q_tot in the
    hundreds (returns are at most 2); mixer_init_scale=0.001 on its output layers starts it near 0
    while dQ_tot/dQ_i stays far above RMSprop's eps (1e-5), so the agents learn."""
    torch.manual_seed(0)
    state, q_i = 25 * torch.rand(256, 72), torch.zeros(256, 3, 1, requires_grad=True)
    for scale, bound in ((0.0, None), (0.001, 0.05)):
        mixer = baselines.HyperQMixer((72,), 32, 3, hypernet_embed=64, init_scale=scale)
        q_tot = mixer(q_i, state)
        (grad,) = torch.autograd.grad(q_tot.sum(), q_i)
        if bound is None:
            assert q_tot.abs().max() > 10
        else:
            assert q_tot.abs().max() < bound and grad.abs().mean() > 1e-4 and (grad >= 0).all()
