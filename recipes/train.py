"""Train FOP or a baseline with Hydra: `python recipes/train.py [+experiment=NAME] [algorithm=NAME] [key=value ...]`.

Reads top to bottom: seed -> environment -> the algorithm's parts from the env's specs (its
config's build(): FOP from fop_modules.algorithm, or a TorchRL baseline from fop_modules.baselines:
masac, maddpg, qmix, vdn) -> their Lightning learner and the trainer -> fit -> summary.json and
plots in the run directory. The last line printed
is `summary: <path to summary.json>`.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torchrl.envs import Compose, TransformedEnv

from fop_modules import baselines, plots, recurrent
from fop_modules.algorithm import AlgorithmConfig
from fop_modules.checkpointing import (
    LOG_ROW_KEY, AtomicCheckpointIO, EnvFrameCheckpoint, RNGCheckpoint, newest_loadable, previous_path,
)
from fop_modules.distributed import RankConsistency
from fop_modules.envs import env_sizes
from fop_modules.envs.smac import StarCraftNotAvailable
from fop_modules.lightning import MARLLightningModule
from fop_modules.optional import MissingDependency, require
from fop_modules.reward_scaling import fit_reward_standardisation

from history import (  # recipes/history.py: one history across resumes
    WANDB_RUN_KEY, WandbRunCheckpoint, continue_history, previous_history, wandb_rewind,
)
import schema  # recipes/schema.py: the config's types (ConfigStore) and ranges (validate)
from schema import ConfigError, startup_errors

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
schema.register()  # configs/config.yaml's defaults start with it: Hydra type-checks every key
USER_ERRORS = (ConfigError, MissingDependency, StarCraftNotAvailable, baselines.WrongActionSpace)  # one paragraph, exit 2
# Top-level keys added to configs/config.yaml after runs were saved, with the value that trains as
# those runs did: `resume=` fills them into an older run's config.yaml.
KEYS_ADDED_SINCE = {  # what a run saved before a key existed trained with
    "reward_std": None,  # raw rewards, as before reward standardisation existed
    "probe": None,  # no probe callback (before it, the recipe probed the didactic games itself)
}
EVALUATION_KEYS_BEFORE = {"eval_interval": "interval", "eval_envs": "episodes", "eval_max_steps": "max_steps"}
"""``collect.eval_*`` of a run saved before the ``evaluation`` node -> its GreedyEvaluation arguments."""
FOP_RATES = ("lr_qvalue", "lr_mixer", "lr_value", "lr_actor", "lr_alpha")
"""FOP's rates, ``optim.lr_*`` in a run saved before each algorithm held its own (``algorithm.lr_*``)."""
OPTIMIZERS_BEFORE = {"adam": "torch.optim.Adam", "rmsprop": "torch.optim.RMSprop"}
"""``optim.name`` -> the optimiser's ``_target_`` of a run saved before ``optim.optimizer`` was a node."""
BASELINE_TARGETS_BEFORE = {"masac": "fop_modules.baselines.MASACConfig", "maddpg": "fop_modules.baselines.MADDPGConfig",
                           "qmix": "fop_modules.baselines.ValueDecompositionConfig",
                           "vdn": "fop_modules.baselines.ValueDecompositionConfig"}
"""``algorithm.name`` -> ``_target_`` of a run saved before the algorithm section had one (another name: FOP)."""
DDP_STRATEGY = "ddp_find_unused_parameters_true"  # several learners: fop_modules/distributed.py
# `hydra.run.dir: ${if_null:${resume},<new dir>}`: a resumed run writes into the run it continues
OmegaConf.register_new_resolver("if_null", lambda value, default: default if value is None else value, replace=True)
# `${episodes:5000}`: frames of 5000 episodes at the config's `episode_limit` (replay and warm-up sizes
# follow a map's limit instead of being copied per map)
OmegaConf.register_new_resolver("episodes", lambda n, *, _root_: int(n) * int(_root_.episode_limit), replace=True)


def make_env(env_cfg: DictConfig, algo: AlgorithmConfig, num_envs: int | None = None, reward_std: float | None = None):
    """The env from its config (``num_envs`` overrides its copies where it has any), with the
    transforms the algorithm's GRU agents need (``algo.uses_gru``: episode starts, hidden-state
    primer, last action) and, given ``reward_std``, the reward standardised to it (fitted to random
    play, seeded). ``algo`` is the typed algorithm config (``schema.validate(cfg).algorithm``)."""
    overrides = {"num_envs": num_envs} if num_envs is not None and "num_envs" in env_cfg else {}
    with startup_errors("env", env_cfg):  # the env's own checks, named as env.<key>
        env = instantiate(env_cfg, **overrides)
    transforms = [fit_reward_standardisation(env, std=reward_std)] if reward_std is not None else []
    if algo.uses_gru:
        sizes = env_sizes(env)
        if not sizes.discrete:
            raise ConfigError(
                f"algorithm={algo.name} with GRU agents (algorithm.recurrent{' or recurrent_critic' if hasattr(algo, 'recurrent_critic') else ''}) "
                "needs discrete actions (the authors' and PyMARL's GRU networks); this env's actions are continuous"
            )
        transforms += recurrent.recurrent_transforms(sizes.n_agents, sizes.action_dim, algo.rnn_hidden, env.batch_size)
    return TransformedEnv(env, Compose(*transforms)) if transforms else env


def build_module(cfg: DictConfig, typed, env) -> tuple[MARLLightningModule, torch.nn.Module]:
    """The Lightning learner of ``cfg.algorithm`` for ``env`` and its policy: the typed config's
    parts (``build``) and their learner, the same two steps for FOP and every baseline. ``typed``
    is ``schema.validate(cfg)``. recipes/evaluate.py and recipes/export.py rebuild a run's networks
    with it before loading its checkpoint."""
    make_run_env = partial(make_env, cfg.env, typed.algorithm, reward_std=cfg.reward_std)
    with startup_errors("algorithm"):  # the networks' and losses' own checks
        parts = typed.algorithm.build(env, typed.collect.total_frames)
    with startup_errors("optim.target_update", cfg.optim.target_update):  # built on the loss here
        module = parts.learner(make_run_env, collect=typed.collect, optim=typed.optim, seed=cfg.seed,
                               temperature=typed.temperature)
    return module, parts.policy


# the package and pip extra of the loggers that need one beyond Lightning (configs/logger/)
LOGGER_EXTRAS = {"TensorBoardLogger": "tensorboard", "WandbLogger": "wandb"}


def make_logger(logger_cfg: DictConfig, run_dir: Path, wandb_run: dict | None = None) -> Logger:
    """The Lightning logger of the ``logger`` group, writing under ``run_dir``. ``wandb_run``: the
    W&B run a resumed run's checkpoint stored, continued from that checkpoint (recipes/history.py)."""
    target = str(logger_cfg._target_).rsplit(".", 1)[-1]
    if target in LOGGER_EXTRAS:
        extra = LOGGER_EXTRAS[target]
        require(extra, needed_for=f"logger={extra}", extra=extra)
    rewind = wandb_rewind(wandb_run) if target == "WandbLogger" else {}
    with startup_errors("logger", logger_cfg):
        return instantiate(logger_cfg, save_dir=str(run_dir), **rewind)


def train(cfg: DictConfig, run_dir: Path, callbacks: Sequence[L.Callback] = ()) -> Path | None:
    """Runs one training job; returns the path of its summary.json (None on DDP ranks > 0).
    ``callbacks`` are added to the trainer's own (benchmarks/throughput.py reads its profiler)."""
    start = time.perf_counter()
    typed = schema.validate(cfg)  # ranges and relations of keys: ConfigError names the key
    if (note := schema.greedy_note(cfg)) is not None:  # alpha = 0 sets the temperature aside: say so
        print(note, flush=True)
    # saves and stops on SIGINT/SIGTERM, and keeps the run's wall time across resumes; a signal
    # while the run is built stops it before it trains, one after the last batch changes nothing
    checkpoint = EnvFrameCheckpoint(run_dir / "checkpoints", cfg.checkpoint.every_frames, started=start)
    with checkpoint.catching_stop_signals():
        return _train(cfg, typed, run_dir, checkpoint, callbacks)


def _train(cfg: DictConfig, typed: schema.Validated, run_dir: Path, checkpoint: EnvFrameCheckpoint,
           callbacks: Sequence[L.Callback]) -> Path | None:
    resume = resume_point(run_dir, typed.collect.total_frames) if cfg.resume is not None else None
    if resume is not None and resume.finished:  # nothing to train: change nothing
        print(resume.finished_message(cfg.resume), flush=True)
        return run_dir / "summary.json"
    for note in resume.notes if resume is not None else []:
        print(note, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    # a missing package fails before building
    logger = make_logger(cfg.logger, run_dir, resume.wandb_run if resume is not None else None)
    if resume is not None and rank_zero_only.rank == 0:  # DDP: rank 0's files
        # the new logger's files start with the history up to the checkpoint
        continue_history(logger, previous_history(logger, run_dir / "logs", resume.env_frames, resume.log_row))
    OmegaConf.save(cfg, run_dir / "config.yaml")  # first: resume=<run dir> reads it back
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    env = make_env(cfg.env, typed.algorithm, reward_std=cfg.reward_std)
    game = env.base_env if isinstance(env, TransformedEnv) else env
    if cfg.episode_limit is not None and cfg.episode_limit != game.episode_limit:
        raise ConfigError(
            f"episode_limit is {cfg.episode_limit} in the config but {game.episode_limit} for "
            f"this env: set episode_limit={game.episode_limit}"
        )
    module, _ = build_module(cfg, typed, env)
    module.checkpoint_replay = cfg.checkpoint.replay_buffer
    with startup_errors("evaluation", cfg.evaluation):  # the env's own rewards, not reward_std's
        evaluation = instantiate(cfg.evaluation, make_env=partial(make_env, cfg.env, typed.algorithm))
    ranks = RankConsistency()  # DDP: the ranks' parameters must end identical
    probe = instantiate(cfg.probe) if cfg.probe is not None else None  # configs/probe/<env>.yaml
    if probe is not None:
        try:
            probe.check(env)
        except TypeError as error:
            raise ConfigError(f"probe: {error} (`~probe`)") from None
    trainer = make_trainer(cfg.trainer, max_epochs=1, logger=logger, default_root_dir=run_dir,
                           callbacks=[evaluation, checkpoint, RNGCheckpoint(), WandbRunCheckpoint(), ranks,
                                      *([probe] if probe is not None else []), *callbacks],
                           plugins=[AtomicCheckpointIO()])
    try:
        trainer.fit(module, ckpt_path=resume.checkpoint if resume is not None else None)
    except SIGTERMException:  # Lightning's exit after the SIGTERM stop below
        if checkpoint.stopped_by is None:
            raise
    if checkpoint.stopped_by is not None and module.env_frames < typed.collect.total_frames:
        raise RunInterrupted(checkpoint.stopped_by, module.env_frames, typed.collect.total_frames, run_dir)
    if checkpoint.signal_received is not None and trainer.is_global_zero:
        print(f"note: {checkpoint.signal_received.name} came after the last training batch: the run is "
              "complete, writing its outputs", flush=True)
    final_return = evaluation.history[-1][1]  # the last training batch is evaluated greedily
    if not trainer.is_global_zero:  # DDP: rank 0 writes the run's outputs
        return None

    summary = {
        "config_name": cfg.name,
        "algorithm": cfg.algorithm.name,
        "seed": cfg.seed,
        "env_frames": module.env_frames,
        "updates": module.updates,
        "final_eval_return": final_return,
        "wall_time_s": round(checkpoint.wall_time_s(), 2),  # all parts of a resumed run
    }
    if trainer.world_size > 1:
        summary.update(world_size=trainer.world_size, rank_parameter_difference=ranks.parameter_difference,
                       rank_replays_differ=ranks.replays_differ)
    curve = evaluation.history
    plots.learning_curve(curve, run_dir / "learning_curve.png", title=cfg.name)
    if evaluation.win_rate is not None:
        summary["final_eval_win_rate"] = evaluation.win_rate
    # every greedy evaluation: [env frames, return, first env's greedy joint action]
    summary["eval_history"] = [[frames, ret, action] for frames, ret, action in curve]
    summary.update(probe.summary if probe is not None else {})  # the game's probe: Table 1b, Fig. 2
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def make_trainer(trainer_cfg: DictConfig, **recipe_args) -> L.Trainer:
    """``lightning.Trainer`` from the ``trainer`` keys and the recipe's own arguments. With several
    learner processes, ``strategy=auto`` becomes DDP that finds unused parameters (each objective's
    backward leaves the others' parameters unused, which plain DDP refuses)."""
    args = {**OmegaConf.to_container(trainer_cfg, resolve=True), **recipe_args}
    with startup_errors("trainer", trainer_cfg):  # Lightning's own checks (devices, accelerator)
        trainer = L.Trainer(**args)
        if args.get("strategy", "auto") == "auto" and trainer.world_size > 1:
            if rank_zero_only.rank == 0:  # the launched ranks run this too
                print(f"note: {trainer.world_size} learner processes: trainer.strategy=auto runs "
                      f"{DDP_STRATEGY}", flush=True)
            trainer = L.Trainer(**{**args, "strategy": DDP_STRATEGY})
    return trainer


class RunInterrupted(Exception):
    """A stop signal ended the run after saving its checkpoint: ``resume=<run dir>`` continues it."""

    def __init__(self, signum: signal.Signals, env_frames: int, total_frames: int, run_dir: Path) -> None:
        self.signum = signum
        if env_frames == 0:  # caught while the run was being built, before any checkpoint
            super().__init__(f"{signum.name} before the first training batch: nothing to save; start the run again")
            return
        super().__init__(
            f"{signum.name} at env frame {env_frames} of {total_frames}: saved "
            f"{run_dir / 'checkpoints' / 'last.ckpt'}; continue with `python recipes/train.py resume={run_dir}`"
        )


@dataclass
class ResumePoint:
    """Where ``resume=<run dir>`` continues: the checkpoint, its env frames, whether the run is
    finished (every frame trained and summary.json written), notes on checkpoints skipped, the
    training row the checkpoint's batch logged after it (fop_modules.checkpointing.LOG_ROW_KEY) and
    the W&B run it logged to (history.WANDB_RUN_KEY; None: another logger)."""

    checkpoint: Path
    env_frames: int
    finished: bool
    notes: list[str]
    log_row: dict | None = None
    wandb_run: dict | None = None

    def finished_message(self, run_dir: Path) -> str:
        return f"resume={run_dir}: the run is finished ({self.env_frames} env frames); nothing to do"


def resume_point(run_dir: Path, total_frames: int) -> ResumePoint:
    """The newest checkpoint of ``run_dir`` that loads (``last.ckpt``, else the previous one).

    Raises:
        ConfigError: when none loads (nothing in the run directory has been changed).
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        path, content, skipped = newest_loadable(last)
    except FileNotFoundError as error:
        if not last.is_file() and not previous_path(last).is_file():
            raise ConfigError(
                f"resume={run_dir}: no checkpoint {last} (the run stopped before its first one, after "
                "checkpoint.every_frames env frames): start it again without resume"
            ) from None
        raise ConfigError(f"resume={run_dir}: no checkpoint loads ({error}): start the run again without resume") from None
    frames = int(content["fop_run"]["env_frames"])
    notes = [f"note: {line}; resuming from {path} (env frame {frames})" for line in skipped]
    finished = frames >= total_frames and (run_dir / "summary.json").is_file()
    return ResumePoint(path, frames, finished, notes, content.get(LOG_ROW_KEY), content.get(WANDB_RUN_KEY))


def resumed_config(cfg: DictConfig, task_overrides: list[str]) -> DictConfig:
    """``resume=<run dir>``: that run's saved config.yaml, the same run. Other overrides are
    refused, since a changed config would not continue the same run."""
    saved = Path(cfg.resume) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={cfg.resume}: no {saved}; give the directory of a run made by this recipe")
    others = [o for o in task_overrides if not o.split("=", 1)[0].lstrip("+~").startswith(("resume", "hydra."))]
    if others:
        raise ConfigError(
            f"resume={cfg.resume} continues that run with its saved config; drop the other "
            f"overrides {others} (or start a new run with them)"
        )
    # Lightning's DDP launcher starts the other ranks with `hydra.run.dir="<dir>"`, quotes included
    run_dirs = [OverridesParser.create().parse_override(o).value() for o in task_overrides
                if o.lstrip("+").startswith("hydra.run.dir=")]
    if run_dirs and Path(run_dirs[0]).resolve() != Path(cfg.resume).resolve():
        raise ConfigError(
            f"resume={cfg.resume} continues that run in its own directory; drop hydra.run.dir={run_dirs[0]}"
        )
    resumed = saved_config(Path(cfg.resume))
    resumed.resume = cfg.resume
    return resumed


def saved_config(run_dir: Path) -> DictConfig:
    """The config.yaml a run saved, in today's terms: a key added since gets the value the run
    trained with (KEYS_ADDED_SINCE), ``logger: <name>`` (before the logger group) its node,
    ``collect.eval_*`` (before the evaluation callback) its ``evaluation`` node, ``algorithm`` its
    ``_target_`` (before algorithms were chosen by it; QMIX and VDN their ``mixer``), ``optim``
    its optimiser and target update nodes (before they were; :func:`optim_nodes`), FOP's
    ``optim.lr_*`` (before each algorithm held its rates) ``algorithm.lr_*`` and QMIX's and
    VDN's ``algorithm.lr`` ``algorithm.lr_qvalue``; a SMAX run its state's scaling
    (``env.world_state``: JaxMARL's before ``raw_world_state`` existed, the cooldowns only while it did)."""
    saved = OmegaConf.load(run_dir / "config.yaml")
    for key, value in KEYS_ADDED_SINCE.items():
        if key not in saved:
            saved[key] = value
    if str(saved.env.get("_target_", "")).endswith("SMAXEnv") and "world_state" not in saved.env:
        saved.env.world_state = "jaxmarl" if saved.env.pop("raw_world_state", True) else "cooldowns"
    if "evaluation" not in saved:
        saved.evaluation = {"_target_": "fop_modules.evaluation.GreedyEvaluation",
                            **{new: saved.collect.pop(old) for old, new in EVALUATION_KEYS_BEFORE.items()}}
    if isinstance(saved.get("logger"), str):
        saved.logger = OmegaConf.load(Path(CONFIG_DIR) / "logger" / f"{saved.logger}.yaml")
    algo = saved.algorithm
    if "_target_" not in algo:  # the recipe dispatched on the name
        algo._target_ = BASELINE_TARGETS_BEFORE.get(algo.get("name"), "fop_modules.algorithm.FOPConfig")
        if algo.get("name") in ("qmix", "vdn"):
            algo.mixer = algo.name
    moved_rates = {key: saved.optim.pop(key) for key in FOP_RATES if key in saved.optim}
    if moved_rates and algo._target_.endswith(".FOPConfig"):  # the baselines never read optim.lr_*
        algo.update(moved_rates)
    if algo._target_.endswith(".ValueDecompositionConfig") and "lr" in algo:
        algo.lr_qvalue = algo.pop("lr")
    if "name" in saved.optim:  # before the optimiser and the target update were _target_ nodes
        saved.optim = optim_nodes(saved.optim)
    return saved


def optim_nodes(old: DictConfig) -> DictConfig:
    """An ``optim`` section saved with ``name``, ``eps``, ``rmsprop_alpha``, ``target_update:
    soft|hard``, ``tau`` and ``hard_update_interval`` as today's nodes of the same settings."""
    optim = {key: value for key, value in old.items() if key in ("grad_clip", "on_nonfinite")}
    alpha = {"alpha": old.rmsprop_alpha} if old.name == "rmsprop" else {}
    optim["optimizer"] = {"_target_": OPTIMIZERS_BEFORE[old.name], "_partial_": True, **alpha, "eps": old.eps}
    optim["target_update"] = (
        {"_target_": "fop_modules.target_update.FusedSoftUpdate", "_partial_": True, "tau": old.tau}
        if old.target_update == "soft" else
        {"_target_": "torchrl.objectives.HardUpdate", "_partial_": True,
         "value_network_update_interval": old.hard_update_interval})
    return OmegaConf.create(optim)


def check_resume_before_hydra(argv: list[str]) -> None:
    """``resume=<run dir>`` on the command line: its checks before Hydra writes into (or creates)
    that directory. A refusal exits with code 2, a finished run with 0, both changing nothing."""
    flags_with_value = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
    overrides = [a for i, a in enumerate(argv)
                 if not a.startswith("-") and not (i and argv[i - 1] in flags_with_value)]
    resume = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("resume=")]
    if len(resume) != 1 or resume[0] in ("", "null"):
        return
    try:
        saved = resumed_config(OmegaConf.create({"resume": resume[0]}), overrides)
        point = resume_point(Path(resume[0]), int(saved.collect.total_frames))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    if point.finished:
        print(point.finished_message(resume[0]), flush=True)
        print(f"summary: {Path(resume[0]) / 'summary.json'}", flush=True)
        sys.exit(0)


def check_probe_choice(choices: dict[str, str | None]) -> None:
    """``probe`` is an optional group (the env's own probe where one exists), so Hydra would pass
    over a misspelt ``probe=<name>`` in silence: a choice other than the env's needs its file."""
    probe, folder = choices.get("probe"), Path(CONFIG_DIR) / "probe"
    if probe is not None and probe != choices.get("env") and not (folder / f"{probe}.yaml").is_file():
        available = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"probe={probe}: no configs/probe/{probe}.yaml; available: {available} (or `~probe`)")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    try:
        check_probe_choice(hydra_cfg.runtime.choices)
        if cfg.resume is not None:
            cfg = resumed_config(cfg, list(hydra_cfg.overrides.task))
        path = train(cfg, Path(hydra_cfg.runtime.output_dir))
    except USER_ERRORS as error:  # what to change or install, not a traceback
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RunInterrupted as stop:  # checkpoint saved: exit as the signal would, without a traceback
        if rank_zero_only.rank == 0:  # DDP: every rank stops, rank 0 says so
            print(f"stopped: {stop}", file=sys.stderr, flush=True)
        sys.exit(128 + stop.signum)
    if path is not None:
        print(f"summary: {path}", flush=True)


if __name__ == "__main__":
    check_resume_before_hydra(sys.argv[1:])
    sys.exit(main())
