"""Train FOP or a baseline with Hydra: `python recipes/train.py [+experiment=NAME] [algorithm=NAME] [key=value ...]`.

Reads top to bottom: seed -> environment -> networks from the env's specs -> the loss (FOPLoss,
or a TorchRL baseline from fop_modules.baselines: masac, maddpg, qmix, vdn) -> the Lightning
module and trainer -> fit -> summary.json and plots in the run directory. The last line printed
is `summary: <path to summary.json>`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import fields
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torchrl.envs import Compose, TransformedEnv

from fop_modules import ConstantTemperature, FOPLoss, FOPMixer, LinearMixer, baselines, networks, plots, probes, recurrent
from fop_modules.lightning import CollectConfig, FOPLightningModule, MARLLightningModule, OptimConfig

from fop_modules.envs import DifferentialGameEnv, MatrixGameEnv
from fop_modules.envs.smac import StarCraftNotAvailable

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
FOP_KEYS = set(OmegaConf.load(Path(CONFIG_DIR) / "algorithm" / "fop.yaml"))  # FOP's algorithm keys


def typed(cls, section: DictConfig, prefix: str):
    """Builds a config dataclass, naming any key it does not know."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; known: {sorted(known)}")
    return cls(**OmegaConf.to_container(section, resolve=True))


def uses_gru(algo: DictConfig) -> bool:
    """Whether FOP's actor or critic is recurrent (then the env needs the GRU transforms and
    the replay needs sequences); the baselines have MLP agents."""
    return algo.name == "fop" and bool(algo.recurrent or algo.recurrent_critic)


def baseline_config(algo: DictConfig, collect: CollectConfig):
    """The typed config of a baseline (fop_modules.baselines.ALGORITHMS) from its section.

    Experiments hold FOP's settings (e.g. smax_authors: a GRU actor, TD(lambda)); a baseline
    keeps its own keys, ignores FOP's other keys (and says so) and rejects unknown ones.
    """
    if algo.name not in baselines.ALGORITHMS:
        raise ValueError(f"algorithm.name must be 'fop' or one of {sorted(baselines.ALGORITHMS)}, got {algo.name!r}")
    if collect.sequence_length is not None:
        raise ValueError(
            f"algorithm={algo.name} replays transitions (MLP agents), but collect.sequence_length is "
            f"{collect.sequence_length}: add collect.sequence_length=null"
        )
    cls = baselines.ALGORITHMS[algo.name]
    known = {f.name for f in fields(cls)}
    ignored = sorted((set(algo) - known - {"name"}) & FOP_KEYS)
    if ignored:
        print(f"note: algorithm={algo.name} has MLP agents and ignores FOP's keys {ignored}", flush=True)
    own = OmegaConf.masked_copy(algo, sorted(set(algo) - set(ignored) - {"name"}))
    return typed(cls, own, "algorithm")


def make_env(env_cfg: DictConfig, algo: DictConfig, num_envs: int | None = None):
    """The env from its config (``num_envs`` overrides its copies where it has any), with the
    transforms a recurrent actor needs (episode starts, hidden-state primer, last action)."""
    overrides = {"num_envs": num_envs} if num_envs is not None and "num_envs" in env_cfg else {}
    try:
        env = instantiate(env_cfg, **overrides)
    except InstantiationException as error:  # Hydra wraps the env's own errors: unwrap ours
        if isinstance(error.__cause__, StarCraftNotAvailable):
            raise error.__cause__ from None
        raise
    if not uses_gru(algo):
        return env
    action_spec = env.full_action_spec["agents", "action"]  # [*E, N], discrete
    n_agents, n_actions = action_spec.shape[-1], action_spec.space.n
    transforms = recurrent.recurrent_transforms(n_agents, n_actions, algo.rnn_hidden, env.batch_size)
    return TransformedEnv(env, Compose(*transforms))


def build_loss(env, algo: DictConfig) -> tuple[FOPLoss, torch.nn.Module]:
    """Networks sized from the env's specs, the mixer and FOPLoss; returns (loss, policy)."""
    action_spec = env.full_action_spec["agents", "action"]
    n_agents = env.full_observation_spec["agents", "observation"].shape[-2]
    obs_dim = env.full_observation_spec["agents", "observation"].shape[-1]
    state_dim = env.full_observation_spec["state"].shape[-1]
    discrete = action_spec.dtype in (torch.int64, torch.int32)
    net = {"hidden": list(algo.hidden), "agent_id": algo.agent_id}
    if uses_gru(algo) and not discrete:
        raise ValueError("algorithm.recurrent and recurrent_critic need discrete actions (the authors' GRU networks)")
    if discrete:
        n_actions = action_spec.space.n
        masked = ("agents", "action_mask") in env.full_observation_spec.keys(True)
        if algo.recurrent:
            actor = recurrent.recurrent_discrete_actor(
                n_agents, obs_dim, n_actions, hidden=algo.rnn_hidden, agent_id=algo.agent_id
            )
        else:
            actor = networks.discrete_actor(n_agents, obs_dim, n_actions, masked=masked, **net)
        if algo.recurrent_critic:
            critic = recurrent.recurrent_discrete_critic(
                n_agents, obs_dim, n_actions, hidden=algo.rnn_hidden, agent_id=algo.agent_id
            )
        else:
            critic = networks.discrete_critic(n_agents, obs_dim, n_actions, **net)
        action_dim = n_actions
    else:
        action_dim = action_spec.shape[-1]
        low, high = action_spec.space.low.min().item(), action_spec.space.high.max().item()
        actor = networks.continuous_actor(n_agents, obs_dim, action_dim, low=low, high=high, **net)
        critic = networks.continuous_critic(n_agents, obs_dim, action_dim, **net)
    value_net = networks.value_network(n_agents, obs_dim, **net) if algo.value_network else None

    mixer_args = dict(n_agents=n_agents, state_dim=state_dim, action_dim=action_dim,
                      discrete_actions=discrete)
    if algo.decomposition == "fop":
        mixer = FOPMixer(**mixer_args, n_heads=algo.n_heads, v_hidden=algo.v_hidden,
                         advantage_form=algo.advantage_form)
    elif algo.decomposition == "linear":
        mixer = LinearMixer(**mixer_args, hidden=algo.v_hidden)
    else:
        raise ValueError(f"algorithm.decomposition must be 'fop' or 'linear', got {algo.decomposition!r}")

    loss = FOPLoss(
        actor, critic, mixer,
        action_space="discrete" if discrete else "continuous",
        value_network=value_net,
        num_qvalue_nets=algo.num_qvalue_nets,
        alpha_init=algo.alpha_init,
        learn_alpha=algo.learn_alpha,
        target_entropy=algo.target_entropy,
        num_actions=action_dim if discrete else None,
        individual_temperature=algo.individual_temperature,
        entropy_reduction=algo.entropy_reduction,
        loss_function=algo.loss_function,
    )
    if algo.td_lambda is None:
        loss.make_value_estimator(gamma=algo.gamma)  # one-step TD, eq. (9)
    else:
        from torchrl.objectives.utils import ValueEstimators

        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=algo.gamma, lmbda=algo.td_lambda)
    return loss, actor


def train(cfg: DictConfig, run_dir: Path) -> Path:
    """Runs one training job; returns the path of its summary.json."""
    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    collect = typed(CollectConfig, cfg.collect, "collect")
    optim = typed(OptimConfig, cfg.optim, "optim")
    fop = cfg.algorithm.name == "fop"
    baseline_cfg = None if fop else baseline_config(cfg.algorithm, collect)
    if not fop:
        temperature = None  # the baselines' own (SAC: learned alpha); the group is FOP's
    elif cfg.algorithm.greedy:
        temperature = ConstantTemperature(0.0)  # greedy FOP (Fig. 3): no entropy at all
    elif cfg.get("temperature") is not None:
        temperature = instantiate(cfg.temperature)
    else:
        temperature = None  # learned dual alpha (algorithm.learn_alpha=true)

    if uses_gru(cfg.algorithm) and collect.sequence_length is None:
        raise ValueError(
            "algorithm.recurrent / recurrent_critic need collect.sequence_length (slices of up to "
            "that many steps; the episode limit replays whole episodes)"
        )

    env = make_env(cfg.env, cfg.algorithm)
    game = env.base_env if isinstance(env, TransformedEnv) else env
    if cfg.get("episode_limit") is not None and cfg.episode_limit != game.episode_limit:
        raise ValueError(
            f"episode_limit is {cfg.episode_limit} in the config but {game.episode_limit} for "
            f"this env: set episode_limit={game.episode_limit}"
        )
    envs = {"make_env": partial(make_env, cfg.env, cfg.algorithm),
            "make_eval_env": partial(make_env, cfg.env, cfg.algorithm)}
    if fop:
        loss, policy = build_loss(env, cfg.algorithm)
        joint_q = loss.joint_q
        module = FOPLightningModule(
            loss, policy, **envs, collect=collect, optim=optim, temperature=temperature, seed=cfg.seed
        )
    else:
        baseline = baselines.build_baseline(cfg.algorithm.name, env, baseline_cfg, collect.total_frames)
        policy, joint_q = baseline.policy, baseline.joint_q
        module = MARLLightningModule(
            baseline.loss, policy, baseline.objectives, **envs, collect=collect, optim=optim,
            seed=cfg.seed, process_batch=baseline.process_batch, exploration=baseline.exploration,
        )
    if cfg.logger == "csv":
        logger = CSVLogger(run_dir, name="logs", version="")
    elif cfg.logger == "tensorboard":
        logger = TensorBoardLogger(run_dir, name="logs", version="")
    else:
        raise ValueError(f"logger must be 'csv' or 'tensorboard', got {cfg.logger!r}")
    trainer = L.Trainer(
        max_epochs=1, logger=logger, enable_checkpointing=False, default_root_dir=run_dir,
        **OmegaConf.to_container(cfg.trainer, resolve=True),
    )
    trainer.fit(module)
    final_return = module.eval_history[-1][1]  # the last training step evaluates greedily

    summary = {
        "config_name": cfg.name,
        "algorithm": cfg.algorithm.name,
        "seed": cfg.seed,
        "env_frames": module.env_frames,
        "updates": module.updates,
        "final_eval_return": final_return,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    curve = module.eval_history
    plots.learning_curve(curve, run_dir / "learning_curve.png", title=cfg.name)
    if module.eval_win_rate is not None:
        summary["final_eval_win_rate"] = module.eval_win_rate
    if isinstance(game, MatrixGameEnv):
        tables = probes.matrix_game_tables(joint_q, env, policy)
        summary.update(tables)
        plots.matrix_game_tables(tables, env.payoff, run_dir / "q_tables.png")
        print(probes.format_matrix_game_tables(tables), flush=True)
    elif isinstance(game, DifferentialGameEnv):
        summary.update(probes.differential_game_result(policy, env))
        plots.differential_game_path(env, curve, run_dir / "learning_path.png")
        print(f"greedy actions {summary['greedy_action']}, payoff {summary['greedy_payoff']:.3f}", flush=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        path = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (StarCraftNotAvailable, baselines.WrongActionSpace) as error:  # what to do, not a traceback
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"summary: {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
