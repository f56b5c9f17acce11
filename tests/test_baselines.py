"""Baselines from TorchRL's losses (fop_modules.baselines) through the same recipe.

Each algorithm runs a few hundred frames on every env where it applies, refuses the envs where
it does not, and each loss family is checked against a hand-computed value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchrl.envs import ExplorationType, set_exploration_type

from fop_modules import baselines
from fop_modules.baselines import MADDPGConfig, MASACConfig, ValueDecompositionConfig, WrongActionSpace
from fop_modules.envs import DifferentialGameEnv, MatrixGameEnv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import schema  # noqa: E402
import train  # noqa: E402  (the recipe module)

BASELINES = ["masac", "maddpg", "qmix", "vdn"]
SHORT = ["collect.total_frames=256", "collect.frames_per_batch=32", "collect.warmup_frames=64",
         "evaluation.interval=128", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
VMAS_SHORT = ["env=vmas", "env.num_envs=4", "collect.total_frames=200", "collect.frames_per_batch=100",
              "collect.init_random_frames=0", "evaluation.episodes=2", "evaluation.max_steps=10"]
CONFIGS = {"masac": MASACConfig(hidden=[16]), "maddpg": MADDPGConfig(hidden=[16]),
           "qmix": ValueDecompositionConfig(hidden=[16]),
           "vdn": ValueDecompositionConfig(name="vdn", mixer="vdn", hidden=[16])}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def _metrics_header(run_dir: Path) -> list[str]:
    return (run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")


@pytest.mark.parametrize("algorithm", ["masac", "qmix", "vdn"])
def test_discrete_baselines_run_on_the_matrix_game(algorithm, tmp_path):
    cfg = _compose(["+experiment=matrix_game", f"algorithm={algorithm}", *SHORT])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["env_frames"] == 256 and summary["updates"] > 0 and summary["algorithm"] == algorithm
    assert len(summary["q_i"]) == 2 and len(summary["greedy_joint_action"]) == 2
    header = _metrics_header(tmp_path)
    if algorithm == "masac":  # no joint action value: Q_i only, no Q table figure
        assert "q_jt" not in summary and not (tmp_path / "q_tables.png").exists()
        assert {"train/loss_actor", "train/loss_qvalue", "train/loss_alpha", "train/alpha"} <= set(header)
    else:
        assert torch.tensor(summary["q_jt"]).shape == (3, 3)
        assert (tmp_path / "q_tables.png").stat().st_size > 0
        assert {"train/loss", "train/eps"} <= set(header)


@pytest.mark.parametrize("algorithm", ["masac", "maddpg"])
def test_continuous_baselines_run_on_mtq(algorithm, tmp_path):
    cfg = _compose(["+experiment=mtq", f"algorithm={algorithm}", *SHORT, "collect.init_random_frames=64"])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["updates"] > 0 and len(summary["greedy_action"]) == 2
    assert all(abs(u) <= 10 for u in summary["greedy_action"])
    assert (tmp_path / "learning_path.png").stat().st_size > 0
    assert ("train/sigma" in _metrics_header(tmp_path)) == (algorithm == "maddpg")


@pytest.mark.parametrize("algorithm", ["masac", "maddpg"])
def test_continuous_baselines_run_on_vmas(algorithm, tmp_path):
    cfg = _compose([f"algorithm={algorithm}", *SHORT, *VMAS_SHORT])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["env_frames"] == 200 and summary["updates"] > 0


@pytest.mark.parametrize("algorithm", ["masac", "maddpg"])
def test_vmas_experiments_give_the_baselines_benchmarls_tanh(algorithm):
    """vmas_benchmarl's ``algorithm.activation: tanh`` (BenchMARL's MLPs) reaches MASAC's and
    MADDPG's actor and critic; it was FOP's key only, and the baselines kept ReLU."""
    def activations(overrides):
        cfg = _compose([f"algorithm={algorithm}", *overrides])
        typed = schema.validate(cfg)
        loss = train.build_module(cfg, typed, train.make_env(cfg.env, typed.algorithm))[0].loss_module
        networks = [loss.actor_network, getattr(loss, "qvalue_network", None) or loss.value_network]  # SAC, DDPG
        return {type(m) for net in networks for m in net.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.Tanh))}

    assert activations(["+experiment=vmas_navigation", "env.num_envs=2"]) == {torch.nn.Tanh}
    assert activations(VMAS_SHORT) == {torch.nn.ReLU}  # the baselines' own default


@pytest.mark.parametrize(
    ("algorithm", "overrides", "rates"),
    [("masac", ["+experiment=vmas_navigation", "env.num_envs=2"], {"actor": 5e-5, "qvalue": 5e-5, "alpha": 5e-5}),
     ("maddpg", ["+experiment=vmas_balance", "env.num_envs=2"], {"actor": 5e-5, "qvalue": 5e-5}),
     ("qmix", ["+experiment=smac_mmm", "env.backend=fake"], {"qvalue": 5e-4}),
     ("masac", VMAS_SHORT, {"actor": 3e-4, "qvalue": 3e-4, "alpha": 3e-4})],  # masac.yaml's own
)
def test_an_experiments_rates_reach_every_algorithm(algorithm, overrides, rates):
    """Each algorithm holds its learning rates (`algorithm.lr_*`), so an experiment's reference
    rates (vmas_benchmarl: BenchMARL's 5e-5 for every objective) reach the baselines too; they
    used to be FOP's `optim.lr_*`, and MASAC and MADDPG kept 3e-4 on the VMAS experiments."""
    cfg = _compose([f"algorithm={algorithm}", *overrides])
    typed = schema.validate(cfg)
    module = train.build_module(cfg, typed, train.make_env(cfg.env, typed.algorithm))[0]
    assert {name: {group["lr"] for group in objective.param_groups} for name, objective in module.objectives.items()} \
        == {name: {rate} for name, rate in rates.items()}


@pytest.mark.parametrize(
    ("algorithm", "experiment", "space", "instead"),
    [("maddpg", "matrix_game", "discrete", "masac, qmix or vdn"),
     ("qmix", "mtq", "continuous", "masac or maddpg"),
     ("vdn", "mtq", "continuous", "masac or maddpg")],
)
def test_wrong_action_space_fails_at_start_saying_what_to_use(algorithm, experiment, space, instead, tmp_path):
    cfg = _compose([f"+experiment={experiment}", f"algorithm={algorithm}", *SHORT])
    with pytest.raises(WrongActionSpace, match=f"algorithm={algorithm} .* has {space} actions .*use algorithm={instead}"):
        train.train(cfg, tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_baselines_need_transitions_and_reject_unknown_keys(tmp_path):
    cfg = _compose(["algorithm=qmix", "collect.sequence_length=4", *SHORT])
    with pytest.raises(ValueError, match="collect.sequence_length=null"):
        train.train(cfg, tmp_path)
    cfg = _compose(["algorithm=vdn", "+algorithm.mixing_dim=3", *SHORT])
    with pytest.raises(ValueError, match=r"algorithm.mixing_dim: unknown key for algorithm=vdn"):
        train.train(cfg, tmp_path)


def test_fop_keys_set_by_an_experiment_are_ignored_and_named(tmp_path, capsys):
    cfg = _compose(["+experiment=mtq", "algorithm=maddpg", *SHORT])  # mtq sets FOP-only keys
    config = schema.validate(cfg).algorithm
    assert isinstance(config, MADDPGConfig)
    assert ("ignores FOP's keys ['individual_temperature', 'num_qvalue_nets', 'value_network']"
            in capsys.readouterr().out)


# ---------------------------------------------------------------- losses, by hand
def _one_step_batch(env, policy, process_batch=None):
    with torch.no_grad():  # as the collector: stored data carries no graph
        batch = env.rollout(1, policy).reshape(-1)  # [E] terminal transitions
    return process_batch(batch) if process_batch is not None else batch


@pytest.mark.parametrize("mixer", ["qmix", "vdn"])
def test_value_decomposition_loss_is_the_squared_error_of_q_tot_to_the_reward(mixer):
    """Terminal one-step transitions: the TD target is the reward, loss = mean (Q_tot - r)^2."""
    torch.manual_seed(0)
    env = MatrixGameEnv(num_envs=16)
    baseline = baselines.value_decomposition(env, CONFIGS[mixer], 100)
    batch = _one_step_batch(env, baseline.policy)
    q_tot = baseline.joint_q(batch)["q_jt"]  # [E, 1]
    expected = (q_tot - batch["next", "reward"]).pow(2).mean()
    torch.testing.assert_close(baseline.loss(batch)["loss"], expected)


def test_vdn_q_tot_is_the_sum_of_the_chosen_q_i():
    env = MatrixGameEnv(num_envs=9)
    baseline = baselines.value_decomposition(env, CONFIGS["vdn"], 100)
    batch = env.reset()
    batch["agents", "action"] = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # every joint action
    out = baseline.joint_q(batch)
    chosen = out["q_i"].gather(-1, batch["agents", "action"].unsqueeze(-1))  # [9, 2, 1]
    torch.testing.assert_close(out["q_jt"], chosen.sum(-2))


def test_qmix_q_tot_is_monotonic_in_every_q_i():
    """QMIX's mixer has non-negative weights: dQ_tot/dQ_i >= 0 whatever the state."""
    env = MatrixGameEnv(num_envs=4)
    baseline = baselines.value_decomposition(env, CONFIGS["qmix"], 100)
    mixer = baseline.loss.mixer_network
    q_i = torch.randn(64, 2, 1, requires_grad=True)
    with baseline.loss.mixer_network_params.to_module(mixer):
        q_tot = mixer.module(q_i, torch.randn(64, 1))
    (grad,) = torch.autograd.grad(q_tot.sum(), q_i)
    assert (grad >= 0).all()


def test_discrete_masac_critic_loss_by_hand():
    """One critic, terminal transitions: loss_qvalue = mean_i,b (Q_i(o, u_i) - r)^2, with the
    team reward copied to every agent."""
    torch.manual_seed(0)
    env = MatrixGameEnv(num_envs=16)
    baseline = baselines.masac(env, MASACConfig(hidden=[16], num_qvalue_nets=1))
    batch = _one_step_batch(env, baseline.policy, baseline.process_batch)
    q_i = baseline.joint_q(batch)["q_i"].gather(-1, batch["agents", "action"].unsqueeze(-1))  # [E, N, 1]
    expected = (q_i - batch["next", "reward"].unsqueeze(-2)).pow(2).mean()
    torch.testing.assert_close(baseline.loss(batch)["loss_qvalue"], expected)


def test_maddpg_critic_loss_by_hand():
    """DDPG on terminal transitions: loss_value = mean (Q_i(o_1..N, u_1..N) - r)^2."""
    torch.manual_seed(0)
    env = DifferentialGameEnv(num_envs=16)
    baseline = baselines.maddpg(env, CONFIGS["maddpg"], 100)
    batch = _one_step_batch(env, baseline.policy, baseline.process_batch)
    loss = baseline.loss
    with loss.value_network_params.to_module(loss.value_network):
        q = loss.value_network(batch.clone())["agents", "state_action_value"]  # [E, N, 1]
    expected = (q - batch["next", "agents", "reward"]).pow(2).mean()
    torch.testing.assert_close(loss(batch)["loss_value"], expected)


@pytest.mark.parametrize(("name", "env"), [("masac", MatrixGameEnv), ("masac", DifferentialGameEnv),
                                           ("maddpg", DifferentialGameEnv), ("qmix", MatrixGameEnv)])
def test_each_objective_sends_gradients_only_to_its_parameters(name, env):
    """What lets MARLLightningModule step one optimiser per loss term after a single loss call."""
    env = env(num_envs=8)
    baseline = CONFIGS[name].build(env, 100)
    batch = _one_step_batch(env, baseline.policy, baseline.process_batch)
    out = baseline.loss(batch)
    every = {id(p): p for o in baseline.objectives.values() for g in o.param_groups for p in g["params"]}
    for objective in baseline.objectives.values():
        own = {id(p) for g in objective.param_groups for p in g["params"]}
        grads = torch.autograd.grad(out[objective.loss_key], list(every.values()), retain_graph=True,
                                    allow_unused=True)
        reached = {i for i, g in zip(every, grads) if g is not None and g.abs().sum() > 0}
        assert reached and reached <= own, objective.loss_key


def test_team_reward_is_copied_to_every_agent():
    env = MatrixGameEnv(num_envs=5)
    batch = baselines.team_reward_per_agent(env.rollout(1).reshape(-1))
    for key in ("reward", "done", "terminated"):
        per_agent = batch["next", "agents", key]
        assert per_agent.shape == (5, 2, 1)
        assert (per_agent == batch["next", key].unsqueeze(-2)).all()


def test_action_masks_are_respected_when_exploring_and_greedy():
    """Agent 1 has 2 actions in a [2, 3] game: epsilon-greedy (eps = 1) and the greedy QMIX policy
    never pick its masked third action; the discrete SAC loss stays finite (MASK_LOGIT)."""
    env = MatrixGameEnv([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], num_envs=256)
    qmix = baselines.value_decomposition(env, ValueDecompositionConfig(hidden=[16], eps_init=1.0), 100)
    with set_exploration_type(ExplorationType.RANDOM):
        explored = qmix.policy(env.reset())["agents", "action"]
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        greedy = qmix.policy(env.reset())["agents", "action"]
    assert (explored[:, 0] < 2).all() and (greedy[:, 0] < 2).all()
    assert set(explored[:, 1].tolist()) == {0, 1, 2}  # the unmasked agent still explores everything
    sac = baselines.masac(env, MASACConfig(hidden=[16]))
    out = sac.loss(_one_step_batch(env, sac.policy, sac.process_batch))
    assert all(torch.isfinite(out[k]) for k in ("loss_actor", "loss_qvalue", "loss_alpha"))


def test_exploration_anneals_and_is_off_when_greedy():
    env = DifferentialGameEnv(num_envs=64)
    baseline = baselines.maddpg(env, MADDPGConfig(hidden=[16], sigma_init=1.0, sigma_end=0.1, anneal_frames=100), 100)
    td = env.reset()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        greedy = baseline.policy(td.clone())["agents", "action"]
    with set_exploration_type(ExplorationType.RANDOM):
        noisy = baseline.policy(td.clone())["agents", "action"]
    assert torch.equal(greedy, baseline.policy[0](td.clone())["agents", "action"])
    assert 0.5 < (noisy - greedy).std() < 1.5  # sigma_init = 1
    baseline.exploration.step(100)
    assert float(baseline.exploration.sigma) == pytest.approx(0.1)


EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
ONE_PER_ENV = {"matrix_game", "mtq", "smac_mmm", "smax_3m"}  # building every map adds nothing


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("algorithm", BASELINES)
def test_every_baseline_composes_with_every_experiment_and_builds_or_says_why_not(algorithm, experiment):
    # GRU presets: QMIX, VDN and MASAC take them as they are (GRU agents); MADDPG replays transitions
    sequences = experiment.startswith(("smac", "smax")) and algorithm == "maddpg"
    cfg = _compose([f"+experiment={experiment}", f"algorithm={algorithm}",
                    *(["env.backend=fake"] * experiment.startswith("smac")),
                    *(["collect.sequence_length=null"] * sequences)])
    config = schema.validate(cfg).algorithm
    assert getattr(config, "recurrent", False) == (experiment.startswith(("smac", "smax")) and not sequences)
    if experiment not in ONE_PER_ENV:
        return
    env = train.make_env(cfg.env, config)
    continuous = experiment == "mtq"
    if (algorithm == "maddpg") != continuous and algorithm != "masac":
        with pytest.raises(WrongActionSpace, match=algorithm):
            config.build(env, cfg.collect.total_frames)
    else:
        baseline = config.build(env, cfg.collect.total_frames)
        assert set(baseline.objectives) >= {"qvalue"}
