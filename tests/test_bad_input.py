"""Bad input fails early and says what is wrong: config keys, tensor shapes, missing packages.

Config cases go through the recipe's own composition (Hydra's compose API with the schema of
recipes/schema.py); two run the command line to check what a user sees (one paragraph, exit 2).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from fop_modules import FOPLoss, FOPMixer, networks
from fop_modules.algorithm import FOPConfig
from fop_modules.envs.smac import SMACEnv, StarCraftNotAvailable
from fop_modules.loop_config import CollectConfig
from fop_modules.optimisation import OptimConfig
from fop_modules.optional import MissingDependency

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import schema  # noqa: E402  (the recipe's config schema)
import train  # noqa: E402  (the recipe module; registers the schema)

SHORT = ["collect.total_frames=64", "collect.frames_per_batch=16", "evaluation.interval=0",
         "trainer.enable_progress_bar=false"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*SHORT, *overrides])


# ============================================================================ config: composing
# Hydra merges every override into the typed schema: wrong types, unknown keys (without `+`) and
# unknown choices fail before the recipe runs, with a message that names the full key.


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("collect.frames=3", r"(?s)Key 'frames' not in 'CollectConfig'.*full_key: collect.frames"),
        ("collect.batch_size=abc", r"(?s)'abc'.*could not be converted to Integer.*full_key: collect.batch_size"),
        ("optim/optimizer=sgd", r"(?s)Could not find 'optim/optimizer/sgd'.*Available options.*adam.*rmsprop"),
    ],
)
def test_composition_rejects_wrong_types_unknown_keys_and_choices(override, match):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as error:
        _compose([override])
    text = f"{error.value}\n{error.value.__cause__ or ''}"  # Hydra prints both
    assert __import__("re").search(match, text), text


@pytest.mark.parametrize("group", ["env", "temperature", "algorithm", "logger"])
def test_unknown_group_choice_lists_the_available_ones(group):
    with pytest.raises(MissingConfigException, match=rf"(?s)Could not find '{group}/nope'.*Available options in '{group}'"):
        _compose([f"{group}=nope"])


def test_a_misspelt_probe_is_refused_though_the_group_is_optional():
    """`optional probe: ${env}` passes over a missing file in silence; the recipe does not."""
    with pytest.raises(train.ConfigError, match=r"probe=nope: no configs/probe/nope.yaml; available: "
                                                r"\['matrix_game', 'mtq'\] \(or `~probe`\)"):
        train.check_probe_choice({"env": "smax", "probe": "nope"})
    train.check_probe_choice({"env": "smax", "probe": "smax"})  # the env has no probe: none
    train.check_probe_choice({"env": "smax", "probe": "matrix_game"})  # a probe of its own (train checks the game)
    train.check_probe_choice({"env": "smax"})  # `~probe`


# ============================================================================ config: validate
# Keys appended with `+`, ranges, and relations between keys: schema.validate raises ConfigError.


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["+collect.frames=3"], r"collect.frames: unknown key; known: \['total_frames'"),
        (["+optim.learning_rate=3"], r"optim.learning_rate: unknown key"),
        (["+algorithm.mixer=qmix"], r"algorithm.mixer: unknown key"),
        (["algorithm.lr_actor=-0.1"], r"algorithm.lr_actor must be finite and > 0, got -0.1"),
        (["algorithm=qmix", "algorithm.lr_qvalue=0"], r"algorithm.lr_qvalue must be finite and > 0, got 0"),
        (["optim.optimizer.eps=-1"], r"optim.optimizer: Invalid epsilon value: -1"),
        (["+optim.optimizer.momentum=0.9"], r"optim.optimizer.momentum: not an argument of torch.optim.Adam"),
        (["algorithm.gamma=1.5"], r"algorithm.gamma must be in \[0, 1\], got 1.5"),
        (["algorithm.gamma=-0.1"], r"algorithm.gamma must be in \[0, 1\]"),
        (["algorithm.td_lambda=2", "collect.sequence_length=1"], r"algorithm.td_lambda must be in \[0, 1\] or null"),
        (["algorithm.num_qvalue_nets=3"], r"algorithm.num_qvalue_nets must be 1 or 2, got 3"),
        (["algorithm.hidden=[64,0]"], r"algorithm.hidden must be a non-empty list of sizes >= 1"),
        (["algorithm.hidden=3"], r"algorithm.hidden: .*not a ListConfig"),  # typed by validate: the
        (["algorithm.gamma=high"], r"algorithm.gamma: .*could not be converted to Float"),  # section
        (["algorithm.decomposition=qmix"], r"algorithm.decomposition: .*expected one of \[fop, linear\]"),  # may be a baseline's
        (["algorithm.activation=gelu"], r"algorithm.activation: .*expected one of \[relu, tanh\]"),
        (["algorithm.target_entropy=high"], r"algorithm.target_entropy must be a finite number or 'auto'"),
        (["collect.batch_size=100000"], r"collect.batch_size \(100000\) .* larger than collect.buffer_size \(10000\)"),
        (["collect.warmup_frames=8"], r"collect.warmup_frames \(8\) must be >= collect.batch_size \(64\)"),
        (["evaluation.episodes=0"], r"evaluation.episodes must be >= 1, got 0"),
        (["evaluation=null"], r"evaluation must be a callback node .* evaluation.interval=0 plays at its start and end only"),
        (["collect.updates_per_batch=0"], r"collect.updates_per_batch and collect.updates_per_episode are both 0: the run would never update"),
        (["collect.frames_per_batch=20", "collect.total_frames=80"], r"collect.frames_per_batch \(20\) must be a multiple of env.num_envs \(16\)"),
        (["algorithm.recurrent=true"], r"algorithm.recurrent / recurrent_critic need collect.sequence_length"),
        (["algorithm.td_lambda=0.8"], r"algorithm.td_lambda needs collect.sequence_length"),
        (["+experiment=smac_3s_vs_3z", "env.backend=fake", "collect.sequence_length=20",
          "collect.frames_per_batch=16", "collect.warmup_frames=64"],
         r"collect.sequence_length \(20\) is shorter than episode_limit \(150\).*collect.sequence_length=150"),
        (["algorithm.learn_alpha=true"], r"temperature / algorithm.learn_alpha: alpha has two sources: .*`~temperature algorithm.learn_alpha=true`"),
        (["~temperature"], r"temperature / algorithm.learn_alpha: alpha has no source: .*temperature=linear"),
        (["+env.n_agents=3"], r"env.n_agents: not an argument of fop_modules.envs.MatrixGameEnv; allowed: \['device', 'num_envs', 'payoff'\]"),
        (["+temperature.stop=3"], r"temperature.stop: not an argument of fop_modules.LinearTemperature"),
        (["temperature.start=-1"], r"temperature: LinearTemperature start and end must be >= 0"),
        (["+trainer.max_step=3"], r"trainer.max_step: not an argument of lightning.Trainer"),
        (["+trainer.max_epochs=3"], r"trainer.max_epochs: set by the recipe; a run is one pass over the collector"),
        # runs that could not train
        (["collect.total_frames=72"], r"collect.total_frames \(72\) must be a multiple of collect.frames_per_batch \(16\).* would run 80 frames; set collect.total_frames=80"),
        (["collect.total_frames=8"], r"collect.total_frames \(8\) must be a multiple of collect.frames_per_batch \(16\)"),
        (["collect.total_frames=48"], r"collect.total_frames \(48\) is below collect.warmup_frames \(64\): the run would end before its first update"),
        (["collect.policy_warmup_frames=80"], r"collect.policy_warmup_frames \(80\) is above collect.total_frames \(64\)"),
        # values that pass a `> 0` check
        (["algorithm.lr_actor=inf"], r"algorithm.lr_actor must be finite and > 0, got inf"),
        (["algorithm.lr_mixer=inf"], r"algorithm.lr_mixer must be finite and > 0, or null"),
        (["reward_std=0"], r"reward_std must be a finite number > 0, or null \(raw rewards\), got 0"),
        (["reward_std=inf"], r"reward_std must be a finite number > 0, or null"),
        (["algorithm.alpha_init=inf"], r"algorithm.alpha_init must be finite and >= 0"),
        (["algorithm.target_entropy=-inf"], r"algorithm.target_entropy must be a finite number or 'auto'"),
        (["collect.sequence_length=10"], r"collect.sequence_length=10 replays trajectory slices, which only a recurrent FOP .* set collect.sequence_length=null"),
        (["collect.sequence_length=0"], r"^collect.sequence_length must be >= 1 or null, got 0$"),
        (["collect.collector=threads"], r"^collect.collector kind must be one of \('single'.*got 'threads'$"),
        (["collect.collector=distributed", "collect.num_workers=3"],
         r"^collect.frames_per_batch \(16\) must be a multiple of num_workers \(3\) for the distributed collector"),
        (["trainer.strategy=ddp"], r"trainer.strategy=ddp fails at the first update.* set trainer.strategy=ddp_find_unused_parameters_true"),
        (["trainer.strategy=ddp_spawn_find_unused_parameters_false"], r"set trainer.strategy=ddp_spawn_find_unused_parameters_true"),
    ],
)
def test_validate_names_the_key_and_what_is_allowed(overrides, match):
    cfg = _compose(overrides)
    with pytest.raises(schema.ConfigError, match=match):
        schema.validate(cfg)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_without_a_gpu_is_refused(accelerator, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(schema.ConfigError, match=rf"trainer.accelerator={accelerator}: torch .* sees no GPU on this machine; set trainer.accelerator=cpu"):
        schema.validate(_compose([f"trainer.accelerator={accelerator}"]))


def test_several_learners_get_the_ddp_strategy_that_works(capsys):
    from lightning.pytorch.strategies import DDPStrategy

    trainer = train.make_trainer(_compose(["trainer.devices=3"]).trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 3
    assert trainer.strategy._ddp_kwargs == {"find_unused_parameters": True}  # what plain DDP lacks
    assert "note: 3 learner processes: trainer.strategy=auto runs ddp_find_unused_parameters_true" in capsys.readouterr().out
    assert type(train.make_trainer(_compose([]).trainer, logger=False).strategy).__name__ == "SingleDeviceStrategy"


def test_every_experiment_trains_whole_batches():
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):  # without SHORT's counts
        for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
            collect = compose("config", overrides=[f"+experiment={path.stem}"]).collect
            assert collect.total_frames % collect.frames_per_batch == 0, path.name  # else refused at start-up


def test_every_experiment_logs_its_training_metrics_at_least_ten_times():
    """Lightning logs train/* every trainer.log_every_n_steps training steps, one per collected
    batch (not per optimiser step): vmas_benchmarl's 1000 (its updates per batch) logged none of
    its 20 batches."""
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
            cfg = compose("config", overrides=[f"+experiment={path.stem}"])
            batches = cfg.collect.total_frames // cfg.collect.frames_per_batch
            assert batches // cfg.trainer.log_every_n_steps >= 10, path.name


def test_validate_accepts_the_default_config_and_types_it():
    typed = schema.validate(_compose([]))
    assert typed.optim.optimizer.func is torch.optim.Adam and typed.collect.batch_size == 64
    assert typed.algorithm.gamma == 0.99 and typed.temperature(0) == 1.0


# ============================================================================ config: building
# What only the built env or networks can check, still before any training step.


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["env.payoff=[[1,2],[3]]"], r"env.payoff: payoff is ragged \(not rectangular\)"),
        (["env.payoff=5"], r"env.payoff: payoff must have one dimension per agent, got a scalar"),
        (["env.payoff=[[1,2],[3,inf]]"], r"env.payoff: payoff contains non-finite values"),
        (["env.num_envs=0", "collect.frames_per_batch=16"], r"env.num_envs: .*num_envs"),
        (["algorithm.individual_temperature=paper"], r"algorithm: individual_temperature='paper' needs a value_network"),
        (["optim.target_update.tau=2"], r"optim.target_update.tau: tau must be in \(0, 1\], got 2"),
        (["trainer.devices=abc"], r"trainer.devices: `devices` selected with `CPUAccelerator` should be an int > 0"),
        (["+experiment=mtq", "algorithm.recurrent=true", "collect.sequence_length=1"],
         r"algorithm=fop with GRU agents \(algorithm.recurrent or recurrent_critic\) needs discrete actions"),
        (["+experiment=smac_mmm", "env.backend=fake", "episode_limit=99", "collect.frames_per_batch=99",
          "collect.sequence_length=99", "evaluation.max_steps=99", "collect.total_frames=198",
          "collect.warmup_frames=99"], r"episode_limit=150"),
    ],
)
def test_env_and_networks_reject_their_config_at_start_up(overrides, match, tmp_path):
    with pytest.raises(schema.ConfigError, match=match):
        train.train(_compose(overrides), tmp_path)
    assert not (tmp_path / "logs" / "metrics.csv").exists()  # nothing trained


# ============================================================================ the command line


def _run(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), *SHORT, *overrides, f"hydra.run.dir={cwd}"],
        capture_output=True, text=True, cwd=cwd, env={"PATH": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )


def test_command_line_prints_one_paragraph_and_exits_2(tmp_path):
    out = _run("algorithm.gamma=1.5", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: algorithm.gamma must be in [0, 1], got 1.5"


def test_command_line_shows_hydras_message_for_a_composition_error(tmp_path):
    out = _run("optim.nme=adam", cwd=tmp_path)
    assert out.returncode == 1  # Hydra's own exit code for errors while composing
    assert "Traceback" not in out.stderr and "full_key: optim.nme" in out.stderr
    assert len(out.stderr.strip().splitlines()) < 10


# ============================================================================ tensors: FOPMixer

MIXER_KEYS = {
    ("agents", "chosen_action_value"): (5, 2, 1),
    ("agents", "state_value"): (5, 2, 1),
    "state": (5, 3),
}


def _mixer_td(**shapes):
    data = {key: torch.randn(*shapes.get(str(key), shape)) for key, shape in MIXER_KEYS.items()}
    data[("agents", "action")] = torch.randint(4, shapes.get("action", (5, 2)))
    return TensorDict(data, batch_size=[5])


def test_mixer_names_a_missing_key():
    td = _mixer_td().exclude(("agents", "state_value"))
    with pytest.raises(KeyError, match=r"FOPMixer: the input tensordict has no \('agents', 'state_value'\)"):
        FOPMixer(n_agents=2, state_dim=3, action_dim=4)(td)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"('agents', 'chosen_action_value')": (5, 3, 1)}, r"\('agents', 'chosen_action_value'\) must have shape \[\*B, 2, 1\], got \(5, 3, 1\)"),
        ({"('agents', 'state_value')": (5, 2)}, r"\('agents', 'state_value'\) must have shape \[5, 2, 1\], got \[5, 2\]"),
        ({"state": (5, 7)}, r"'state' must have shape \[5, 3\], got \[5, 7\]"),
        ({"action": (5, 3)}, r"\('agents', 'action'\) must hold action indices of shape \[5, 2\], got \[5, 3\]"),
    ],
)
def test_mixer_names_the_key_and_expected_shape(shapes, match):
    with pytest.raises(ValueError, match=match):
        FOPMixer(n_agents=2, state_dim=3, action_dim=4)(_mixer_td(**shapes))


# ============================================================================ tensors: FOPLoss
N, OBS, A, S, B = 2, 3, 3, 4, 6


def _loss(action_space="discrete", critic=None):
    if action_space == "discrete":
        return FOPLoss(networks.discrete_actor(N, OBS, A, hidden=(8,)),
                       critic or networks.discrete_critic(N, OBS, A, hidden=(8,)),
                       FOPMixer(N, S, A), action_space="discrete", num_qvalue_nets=1)
    return FOPLoss(networks.continuous_actor(N, OBS, 1, low=-1.0, high=1.0, hidden=(8,)),
                   critic or networks.continuous_critic(N, OBS, 1, hidden=(8,)),
                   FOPMixer(N, S, 1, discrete_actions=False), action_space="continuous",
                   value_network=networks.value_network(N, OBS, hidden=(8,)), num_qvalue_nets=1)


def _batch(action_space="discrete", reward_shape=(B, 1), state_dim=S, action_shape=None):
    def step():
        data = {("agents", "observation"): torch.randn(B, N, OBS), "state": torch.randn(B, state_dim)}
        if action_space == "discrete":
            data[("agents", "action_mask")] = torch.ones(B, N, A, dtype=torch.bool)
        return data
    flag = torch.zeros(B, 1, dtype=torch.bool)
    if action_space == "discrete":
        action = torch.randint(A, action_shape or (B, N))
    else:
        action = torch.rand(*(action_shape or (B, N, 1))) * 2 - 1
    nxt = {**step(), "reward": torch.randn(*reward_shape), "done": flag, "terminated": flag.clone()}
    return TensorDict({**step(), ("agents", "action"): action, "next": nxt}, batch_size=[B])


def test_loss_names_a_missing_key_and_its_shape():
    td = _batch().exclude(("next", "terminated"))
    with pytest.raises(KeyError, match=r"no \('next', 'terminated'\) \(team terminated flag, shape \[\*B, 1\]\)"):
        _loss()(td)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (dict(reward_shape=(B, N, 1)), r"\('next', 'reward'\) \(team reward, one per sample\) must have shape \[\*B, 1\] = \[6, 1\], got \[6, 2, 1\]"),
        (dict(state_dim=S + 1), r"'state' \(global state for the mixer\) must have shape \[\*B, state_dim\] = \[6, 4\], got \[6, 5\]"),
        (dict(action_shape=(B, N + 1)), r"\('agents', 'action'\) \(action indices\) must have shape \[\*B, n_agents\] = \[6, 2\], got \[6, 3\]"),
        (dict(action_space="continuous", action_shape=(B, N)), r"\('agents', 'action'\) \(actions\) must have shape \[\*B, n_agents, action_dim\] = \[6, 2, 1\], got \[6, 2\]"),
    ],
)
def test_loss_names_the_key_and_expected_shape_of_its_input(batch, match):
    with pytest.raises(ValueError, match=match):
        _loss(batch.get("action_space", "discrete"))(_batch(**batch))


class _FlatCritic(nn.Module):
    """A continuous critic that forgets the trailing 1: Q_i of shape [*B, N]."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(OBS + 1, 1)

    def forward(self, observation, action):
        return self.linear(torch.cat([observation, action], -1)).squeeze(-1)


def test_loss_names_a_critic_output_of_the_wrong_shape():
    critic = TensorDictModule(_FlatCritic(), in_keys=[("agents", "observation"), ("agents", "action")],
                              out_keys=[("agents", "state_action_value")])
    match = r"\('agents', 'state_action_value'\) \(Q_i\(o_i, u_i\)\) must have shape \[\*B, n_agents, 1\] = \[6, 2, 1\], got \[6, 2\]"
    with pytest.raises(ValueError, match=match):
        _loss("continuous", critic)(_batch("continuous"))


def test_loss_names_a_discrete_critic_with_the_wrong_number_of_actions():
    critic = networks.discrete_critic(N, OBS, A + 1, hidden=(8,))
    with pytest.raises(ValueError, match=r"\('agents', 'action_value'\) .* \[\*B, n_agents, n_actions\] = \[6, 2, 3\], got \[6, 2, 4\]"):
        _loss(critic=critic)(_batch())


# ============================================================================ optional packages


def _hide(monkeypatch, *names: str) -> None:
    """Makes `import name` (and its submodules) fail as if the package were not installed."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def test_smax_without_jaxmarl_names_the_extra(monkeypatch):
    from fop_modules.envs.smax import SMAXEnv

    _hide(monkeypatch, "jaxmarl")
    with pytest.raises(MissingDependency, match=r'SMAXEnv needs .*`jaxmarl.*pip install -e "\.\[smax\]"'):
        SMAXEnv("3m", num_envs=1)


def test_smax_through_the_recipe_says_what_to_install(monkeypatch, tmp_path):
    _hide(monkeypatch, "jax", "jaxmarl")
    cfg = _compose(["+experiment=smax_3m", "collect.frames_per_batch=16", "env.num_envs=8",
                    "collect.batch_size=4", "collect.warmup_frames=16"])
    with pytest.raises(MissingDependency, match=r'`jax`, which is not installed: pip install -e "\.\[smax\]"'):
        train.train(cfg, tmp_path)


def test_real_starcraft_without_smac_names_the_install_command(monkeypatch, tmp_path):
    _hide(monkeypatch, "smac")
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(StarCraftNotAvailable, match=r"pip install git\+https://github.com/oxwhirl/smac.git"):
        SMACEnv(map_name="3m", backend="sc2")


def test_vmas_missing_names_the_install_command(monkeypatch):
    from fop_modules.envs.vmas import make_vmas_env

    _hide(monkeypatch, "vmas")
    with pytest.raises(MissingDependency, match=r'make_vmas_env needs the Python package `vmas`.*pip install "vmas>=1.5"'):
        make_vmas_env("navigation", num_envs=1)


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_logger_without_its_package_names_the_extra(logger, monkeypatch, tmp_path):
    _hide(monkeypatch, logger)
    with pytest.raises(MissingDependency, match=rf'logger={logger} needs .*pip install -e "\.\[{logger}\]"'):
        train.train(_compose([f"logger={logger}"]), tmp_path)


def _corrupt(td, key, value):
    """``td`` with ``value(tensor)`` at ``key``."""
    td.set(key, value(td.get(key)))
    return td


def _one_nan(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[0] = float("nan")
    return tensor


def _first_index_is(value):
    def change(action):
        action = action.clone()
        action.view(-1)[0] = value
        return action
    return change


@pytest.mark.parametrize(
    ("key", "change", "error", "match"),
    [
        (("agents", "action_mask"), lambda m: torch.ones(B, N, A + 1, dtype=torch.bool), ValueError,
         r"\('agents', 'action_mask'\) \(available actions\) must have shape \[\*B, n_agents, n_actions\] = \[6, 2, 3\], got \[6, 2, 4\]"),
        (("agents", "action_mask"), lambda m: m.float(), TypeError, r"\('agents', 'action_mask'\) .* must be a bool tensor, got torch.float32"),
        (("agents", "action"), _first_index_is(A), ValueError, r"\('agents', 'action'\) holds action indices from 0 to 3; with 3 actions they must lie in \[0, 2\]"),
        (("agents", "action"), _first_index_is(-1), ValueError, r"\('agents', 'action'\) holds action indices from -1 to \d; .* \[0, 2\]"),
        (("agents", "action"), lambda a: a.float() + 0.7, TypeError, r"\('agents', 'action'\) must hold integer action indices \(int64\), got torch.float32"),
        (("next", "done"), lambda d: d.float(), TypeError, r"\('next', 'done'\) must be a bool tensor .* got torch.float32: convert it with .bool\(\)"),
        (("next", "terminated"), lambda d: d.long(), TypeError, r"\('next', 'terminated'\) must be a bool tensor"),
        (("agents", "observation"), _one_nan, ValueError, r"\('agents', 'observation'\) holds 1 NaN or infinite value\(s\)"),
        (("next", "agents", "observation"), _one_nan, ValueError, r"\('next', 'agents', 'observation'\) holds 1 NaN"),
        ("state", _one_nan, ValueError, r"'state' holds 1 NaN or infinite value\(s\)"),
        (("next", "reward"), lambda r: r / 0.0, ValueError, r"\('next', 'reward'\) holds 6 NaN or infinite value\(s\)"),
    ],
)
def test_loss_names_the_key_of_a_bad_value_or_dtype(key, change, error, match):
    with pytest.raises(error, match=match):
        _loss()(_corrupt(_batch(), key, change))


def test_loss_value_checks_can_be_switched_off():
    loss = _loss()
    loss.check_values = False  # the documented switch: no NaN scan, the NaN reaches the losses
    out = loss(_corrupt(_batch(), "state", _one_nan))
    assert out["loss_qvalue"].isnan()


def test_a_huge_but_finite_batch_is_not_taken_for_nan():
    big = _corrupt(_batch(), ("agents", "observation"), lambda o: torch.full_like(o, 3e38))  # its sum overflows
    _loss().qvalue_loss(big)  # no error: only a real NaN or inf is refused


def test_loss_refuses_an_empty_batch():
    with pytest.raises(ValueError, match=r"FOPLoss: the batch is empty \(batch_size \[0\]\)"):
        _loss()(_batch()[:0])


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(action=_first_index_is(4)), ValueError, r"FOPMixer: \('agents', 'action'\) holds action indices from 0 to 4; with action_dim=4 they must lie in \[0, 3\]"),
        (dict(action=lambda a: a.float()), TypeError, r"FOPMixer: \('agents', 'action'\) must hold integer action indices, got torch.float32"),
        (dict(state=_one_nan), ValueError, r"FOPMixer: 'state' holds NaN or infinite values"),
    ],
)
def test_mixer_names_the_key_of_a_bad_value(change, error, match):
    td = _mixer_td()
    for key, value in change.items():
        _corrupt(td, ("agents", "action") if key == "action" else key, value)
    with pytest.raises(error, match=match):
        FOPMixer(n_agents=2, state_dim=3, action_dim=4)(td)


# ============================================================================ library errors in library terms
# The library names its own arguments and fields; the recipe's schema turns them into config keys.

RECIPE_KEY = re.compile(r"\b(?:collect|optim|algorithm|checkpoint|trainer|temperature|env)(?:\.[a-z_]+|=)|\brecipe\b")


def _error_texts(path: Path) -> list[tuple[int, str]]:
    """The string parts of every ``raise`` and warning call of a module, by line."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text())):
        call = node.exc if isinstance(node, ast.Raise) else node if isinstance(node, ast.Call) else None
        if not isinstance(call, ast.Call):
            continue
        name = ast.unparse(call.func)
        if isinstance(node, ast.Call) and "warn" not in name:
            continue
        for arg in call.args:
            for part in ast.walk(arg):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    texts.append((part.lineno, part.value))
    return texts


def test_library_errors_name_library_arguments_not_recipe_keys():
    quoting = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in sorted((ROOT / "fop_modules").rglob("*.py"))
               for line, text in _error_texts(path) if RECIPE_KEY.search(text)]
    assert quoting == []


def test_library_config_errors_name_their_fields():
    with pytest.raises(ValueError, match=r"^CollectConfig.batch_size \(64\) x sequence_length \(1\) frames is larger than CollectConfig.buffer_size \(10\)$"):
        CollectConfig(buffer_size=10)
    with pytest.raises(ValueError, match=r"^OptimConfig.grad_clip must be finite and > 0, or null \(no clipping\), got -1$"):
        OptimConfig(grad_clip=-1)
    with pytest.raises(ValueError, match=r"^frames_per_batch \(16\) must be a multiple of num_workers \(3\)"):
        CollectConfig(collector="distributed", num_workers=3)  # at start-up, not when the collector is built
    fop = {key: value for key, value in yaml.safe_load((ROOT / "configs" / "algorithm" / "fop.yaml").read_text()).items()
           if key != "_target_"}
    with pytest.raises(ValueError, match=r"^num_qvalue_nets must be 1 or 2, got 3$"):  # FOPLoss's own rule
        FOPConfig(**{**fop, "num_qvalue_nets": 3})
    with pytest.raises(ValueError, match=r"^target_entropy must be a finite number or 'auto', got inf$"):
        FOPLoss.check_options(target_entropy=float("inf"))  # FOPLoss itself refuses it now
    with pytest.raises(ValueError, match=r"^FOPConfig.td_lambda must be in \[0, 1\] or None, got 2$"):
        FOPConfig(**{**fop, "td_lambda": 2})


def test_config_choices_are_the_library_options():
    """The typed configs' Enums are read off the library's own options: the same strings, in
    the same order, as the Literals and registries the classes check."""
    from typing import get_args

    from fop_modules import algorithm, loss, mixer

    pairs = [(algorithm.Decomposition, list(algorithm.DECOMPOSITIONS)),
             (algorithm.AdvantageForm, list(get_args(mixer.AdvantageFormName))),
             (algorithm.IndividualTemperature, list(get_args(loss.IndividualTemperatureName))),
             (algorithm.EntropyReduction, list(get_args(loss.EntropyReductionName))),
             (algorithm.LossFunction, list(get_args(loss.LossFunctionName))),
             (algorithm.Activation, list(networks.ACTIVATIONS)),
             ]
    for enum, options in pairs:
        assert [member.value for member in enum] == options, enum
        assert all(member == member.value for member in enum)  # str Enums: equal to their strings


@pytest.mark.parametrize(("name", "kind"), [("fop", "FOPLightningModule"), ("masac", "MARLLightningModule"),
                                          ("maddpg", "MARLLightningModule"), ("qmix", "MARLLightningModule"),
                                          ("vdn", "MARLLightningModule")])
def test_every_algorithm_yaml_builds_its_parts_and_learner_without_the_recipe(name, kind):
    """Every algorithm has one shape in the library: configs/algorithm/<name>.yaml instantiated by
    its _target_ is a typed config whose build() returns the parts (loss, policy, objectives with
    their rates) and whose parts make the Lightning learner; no recipe involved."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fop_modules.algorithm import AlgorithmParts
    from fop_modules.envs import DifferentialGameEnv, MatrixGameEnv
    from fop_modules.loop_config import CollectConfig
    from fop_modules.temperature import ConstantTemperature

    config = instantiate(OmegaConf.load(ROOT / "configs" / "algorithm" / f"{name}.yaml"))
    make_env = (lambda: DifferentialGameEnv(num_envs=2)) if name == "maddpg" else (lambda: MatrixGameEnv(num_envs=2))
    parts = config.build(make_env(), 1000)
    assert isinstance(parts, AlgorithmParts) and parts.objectives and not config.uses_gru
    assert all(group["lr"] > 0 for objective in parts.objectives.values() for group in objective.param_groups)
    temperature = ConstantTemperature(0.1) if config.takes_temperature else None
    learner = parts.learner(make_env, collect=CollectConfig(), optim=OptimConfig(), temperature=temperature)
    assert type(learner).__name__ == kind and learner.loss_module is parts.loss
    if not config.takes_temperature:
        with pytest.raises(ValueError, match="has its own exploration"):
            parts.learner(make_env, collect=CollectConfig(), optim=OptimConfig(), temperature=ConstantTemperature(0.1))