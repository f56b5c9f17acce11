"""The recipe's config schema: types in Hydra's ConfigStore, ranges and relations in `validate`.

configs/config.yaml starts its defaults list with ``fop_modules_schema`` (:class:`RunConfig`,
registered by :func:`register`), so Hydra merges every YAML file and command-line override into
typed dataclasses while composing: an unknown key, a value of the wrong type or a choice outside
an Enum stops the run before anything is built, with Hydra's message naming the full key, e.g.
``Key 'lr' not in 'OptimConfig' ... full_key: optim.lr``. :func:`validate` then checks ranges
and the relations between keys, and raises :class:`ConfigError` naming the dotted key and what is
allowed. The recipe prints a ConfigError as one paragraph and exits with code 2.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Dict, Optional

import lightning as L
import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fop_modules.algorithm import AlgorithmConfig, FOPConfig
from fop_modules.loop_config import CollectConfig
from fop_modules.optimisation import OptimConfig
from fop_modules.temperature import ConstantTemperature, TemperatureSchedule, check_alpha_source

SCHEMA_NAME = "fop_modules_schema"  # namespaced: torchrl registers its own `env`, `loss`, ... nodes


RECIPE_TRAINER_ARGS = {  # lightning.Trainer arguments that recipes/train.py sets itself
    "logger": "choose it with the `logger` group (configs/logger/)",
    "max_epochs": "a run is one pass over the collector: set collect.total_frames",
    "enable_checkpointing": "checkpoints are set by the checkpoint.* keys",
    "callbacks": "the recipe adds its checkpoint callbacks itself",
    "plugins": "the recipe writes checkpoints atomically with its own CheckpointIO",
    "default_root_dir": "the run directory is hydra.run.dir",
}


class ConfigError(ValueError):
    """A config value the run cannot start with; the message names the dotted key."""


@dataclass
class CheckpointConfig:
    """Types of configs/config.yaml's ``checkpoint`` section."""

    every_frames: int = MISSING
    replay_buffer: bool = MISSING

    def __post_init__(self) -> None:
        if self.every_frames < 0:
            raise ConfigError(f"checkpoint.every_frames must be >= 0, got {self.every_frames}")


@dataclass
class OptimSection:
    """Types of the ``optim`` section: :class:`~fop_modules.optimisation.OptimConfig`'s fields,
    its optimiser and target update as ``_target_`` nodes of their groups (configs/optim/)."""

    optimizer: Any = MISSING  # configs/optim/optimizer/: a torch optimiser, _partial_
    target_update: Any = MISSING  # configs/optim/target_update/: a target updater on the loss, _partial_
    grad_clip: Optional[float] = MISSING
    on_nonfinite: str = MISSING


@dataclass
class RunConfig:
    """Types of configs/config.yaml. ``env``, ``temperature``, ``probe``, ``logger`` and
    ``evaluation`` are ``_target_`` nodes whose keys :func:`validate` checks against the signature
    of their target."""

    name: str = MISSING
    seed: int = MISSING
    env: Any = MISSING
    temperature: Any = None  # null (`~temperature`): alpha is learned
    probe: Any = None  # a Lightning callback probing the finished run (configs/probe/); null: none
    algorithm: Any = MISSING  # an algorithm's config by its _target_ (FOPConfig, MASACConfig, ...): validate types it
    collect: CollectConfig = MISSING
    optim: OptimSection = MISSING
    trainer: Dict[str, Any] = MISSING  # lightning.Trainer arguments
    logger: Any = MISSING  # a Lightning logger (configs/logger/); the recipe gives its save_dir
    evaluation: Any = MISSING  # a Lightning callback evaluating the run (GreedyEvaluation); the recipe gives its env
    checkpoint: CheckpointConfig = MISSING
    resume: Optional[str] = None  # a run directory to continue
    episode_limit: Optional[int] = None  # the env's time limit, checked against the env
    reward_std: Optional[float] = None  # train on the reward standardised to this std (null: raw)


@dataclass
class Validated:
    """The typed sections of a validated run config."""

    algorithm: AlgorithmConfig  # FOPConfig (FOP and its ablations) or a baseline's config
    collect: CollectConfig
    optim: OptimConfig
    temperature: TemperatureSchedule | None


def register() -> None:
    """Registers :class:`RunConfig` as ``fop_modules_schema`` (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)


@contextlib.contextmanager
def startup_errors(section: str, node: DictConfig | None = None, owner: str | None = None):
    """Turns the ValueError/TypeError of something built from ``section`` into a ConfigError,
    named ``section.key`` when the message names one key of ``node`` (one that names the choice,
    ``section=<name> ...``, passes as it is). The library names its own
    fields (``CollectConfig.batch_size``): with ``owner`` (that class's name) they read as the
    config keys the user sets (``collect.batch_size``)."""
    try:
        yield
    except ConfigError:
        raise
    except (InstantiationException, ValueError, TypeError, OmegaConfBaseException, MisconfigurationException) as error:
        if isinstance(error, InstantiationException):  # Hydra wraps the target's own error
            if not isinstance(error.__cause__, (ValueError, TypeError)):
                raise (error.__cause__ or error) from None  # e.g. a missing dependency
            error = error.__cause__
        if str(error).startswith(f"{section}="):  # names the choice itself (e.g. WrongActionSpace): as it is
            raise error from None
        message = str(error).replace(f"{owner}.", f"{section}.") if owner else str(error)
        message = re.sub(r"\bNone\b", "null", message) if owner else message  # YAML's word for it
        if message.startswith(f"{section}."):  # the message names its key already
            raise ConfigError(message) from None
        first = message.split(" ", 1)[0]
        if owner and node is not None and first in node:  # the config class's field (or an argument of
            # the library check it runs) is the section's key
            raise ConfigError(f"{section}.{message}") from None
        named = [str(key) for key in (node or {}) if re.search(rf"\b{key}\b", message)]
        where = f"{section}.{named[0]}" if len(named) == 1 else section
        raise ConfigError(f"{where}: {message}") from None


def check_target_keys(node: DictConfig, section: str) -> None:
    """Each key of a ``_target_`` node must be an argument of its target (unless it takes **kwargs)."""
    target = node.get("_target_")
    try:
        target_object = get_object(target)  # a class's own __init__ (EnvBase's metaclass hides it)
        init = target_object.__init__ if inspect.isclass(target_object) else target_object
        params = inspect.signature(init).parameters
    except Exception as error:  # noqa: BLE001 - an import or attribute error, reported as config
        raise ConfigError(f"{section}._target_: cannot import {target!r} ({error})") from None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(name for name in params if name != "self")
    for key in node:
        if not str(key).startswith("_") and key not in params:
            raise ConfigError(f"{section}.{key}: not an argument of {target}; allowed: {allowed}")


def fop_temperature(cfg: DictConfig, algo: FOPConfig) -> TemperatureSchedule | None:
    """FOP's temperature schedule from the ``temperature`` group (None: alpha is learned), checked
    against ``algorithm.learn_alpha``."""
    if algo.greedy:  # alpha = 0 whatever the temperature group or learn_alpha (build_fop drops it)
        return ConstantTemperature(0.0)  # greedy FOP (Fig. 3): no entropy at all
    temperature = None  # null: alpha is learned (the dual objective)
    if cfg.temperature is not None:
        check_target_keys(cfg.temperature, "temperature")
        with startup_errors("temperature"):
            temperature = instantiate(cfg.temperature)
    try:
        check_alpha_source(temperature, algo.learn_alpha)  # the library's rule, in its terms
    except ValueError as error:
        raise ConfigError(
            f"temperature / algorithm.learn_alpha: {error}. Here a schedule is the temperature group "
            "(temperature=linear) and a learned alpha is `~temperature algorithm.learn_alpha=true`"
        ) from None
    return temperature


def greedy_note(cfg: DictConfig) -> str | None:
    """The line a greedy FOP run prints (``algorithm.greedy=true``, ``algorithm=fop_greedy``):
    alpha = 0 for the whole run wins over the temperature group and ``learn_alpha``, and says which
    of them it sets aside. None for any other run."""
    algo = cfg.algorithm
    if not algo.get("greedy"):
        return None
    unused = []
    if cfg.temperature is not None:
        unused.append(f"temperature ({str(cfg.temperature.get('_target_')).rsplit('.', 1)[-1]})")
    if algo.get("learn_alpha"):
        unused.append("algorithm.learn_alpha=true")
    return "note: algorithm.greedy=true: alpha = 0 for the whole run" + (
        f"; {' and '.join(unused)} not used" if unused else "")


def algorithm_section(algo: DictConfig, collect: CollectConfig) -> AlgorithmConfig:
    """The typed config of the ``algorithm`` section: its ``_target_``'s dataclass
    (:class:`~fop_modules.algorithm.AlgorithmConfig`) typed by OmegaConf (a wrong type or choice
    names its key), its ranges checked by the class itself and its replay against ``collect``.

    Experiments hold FOP's settings (e.g. smax_authors: a GRU actor, TD(lambda)): another
    algorithm takes the keys it has (``recurrent``, ``rnn_hidden``, the rates ``lr_*``, ...),
    ignores FOP's other keys (and says so) and rejects unknown ones.
    """
    target = algo.get("_target_")
    if target is None:
        raise ConfigError("algorithm._target_: missing; pick an algorithm with algorithm=<name> (configs/algorithm/)")
    try:
        cls = get_object(str(target))
    except Exception as error:  # noqa: BLE001 - an import or attribute error, reported as config
        raise ConfigError(f"algorithm._target_: cannot import {target!r} ({error})") from None
    if not (is_dataclass(cls) and callable(getattr(cls, "build", None))):
        raise ConfigError(f"algorithm._target_: {target} is not an algorithm config (a dataclass with build(env, total_frames))")
    known = [f.name for f in fields(cls)]
    keys = [str(key) for key in algo if not str(key).startswith("_")]
    fop_keys = [] if cls is FOPConfig else [f.name for f in fields(FOPConfig)]
    ignored = sorted(set(keys) - set(known) & set(fop_keys))
    unknown = [key for key in keys if key not in known and key not in fop_keys]
    if unknown:
        raise ConfigError(f"algorithm.{unknown[0]}: unknown key for algorithm={algo.get('name')}; known: {known}")
    values = {key: value for key, value in OmegaConf.to_container(algo, resolve=True).items() if key in known}
    with startup_errors("algorithm", algo, cls.__name__):  # __post_init__ checks its own ranges
        try:  # merged onto the schema: a config read back from a run's config.yaml is untyped
            typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
        except OmegaConfBaseException as error:  # a wrong type or choice: name the dotted key
            raise ConfigError(f"algorithm.{error.full_key}: {error.msg}") from None
    try:
        typed.check_replay(collect.sequence_length)
    except ValueError as error:  # the library's terms -> the config's keys
        message = str(error).replace(f"{cls.__name__}.", "algorithm.").replace("CollectConfig.", "collect.")
        raise ConfigError(re.sub(r"\bNone\b", "null", message.replace("=True", "=true").replace("=False", "=false"))) from None
    if ignored:
        agents = "GRU" if typed.uses_gru else "MLP"
        print(f"note: algorithm={typed.name} has {agents} agents and ignores FOP's keys {ignored}", flush=True)
    return typed


def optim_section(node: DictConfig) -> OptimConfig:
    """:class:`~fop_modules.optimisation.OptimConfig` from the ``optim`` section: the optimiser and
    the target update instantiated from their ``_target_`` nodes (partials the loop calls on each
    objective's parameter groups and on the loss), the optimiser's own argument checks run on a
    dummy parameter before anything is built."""
    built = {}
    for key in ("optimizer", "target_update"):
        if not isinstance(node.get(key), DictConfig):
            raise ConfigError(f"optim.{key} must be a _target_ node (configs/optim/{key}/; e.g. optim/{key}="
                              f"{'adam' if key == 'optimizer' else 'soft'})")
        check_target_keys(node[key], f"optim.{key}")
        with startup_errors(f"optim.{key}", node[key]):
            built[key] = instantiate(node[key])
    with startup_errors("optim.optimizer", node.optimizer):  # torch's own checks of its arguments
        built["optimizer"]([{"params": [torch.zeros(1, requires_grad=True)], "lr": 1e-3}])
    with startup_errors("optim", node, "OptimConfig"):
        return OptimConfig(**built, grad_clip=node.grad_clip, on_nonfinite=node.on_nonfinite)


def check_trainer(trainer: DictConfig) -> None:
    """A GPU accelerator needs a GPU torch can use; DDP needs ``find_unused_parameters``."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not (
        accelerator == "gpu" and torch.backends.mps.is_available()
    ):
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"trainer.accelerator={accelerator}: torch {torch.__version__} ({build}) sees no GPU on this "
            "machine; set trainer.accelerator=cpu (or auto)"
        )
    strategy = str(trainer.get("strategy", "auto"))
    base = strategy.removesuffix("_find_unused_parameters_false")
    if base in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        raise ConfigError(
            f"trainer.strategy={strategy} fails at the first update: each objective's backward leaves the "
            f"others' parameters unused; set trainer.strategy={base}_find_unused_parameters_true "
            "(or auto, which the recipe turns into it for several learners)"
        )


def validate(cfg: DictConfig) -> Validated:
    """Range and cross-key checks of a composed config; returns its typed sections.

    Raises:
        ConfigError: naming the first bad key (dotted path) and what is allowed.
    """
    typed = {}
    for section, cls in (("collect", CollectConfig), ("optim", OptimSection)):
        known = [f.name for f in fields(cls)]
        for key in cfg[section]:  # `+section.key=...` appends past Hydra's struct check
            if key not in known:
                raise ConfigError(f"{section}.{key}: unknown key; known: {known}")
        with startup_errors(section, cfg[section], cls.__name__):  # __post_init__ checks its own ranges
            # merged onto the schema: a config read back from a run's config.yaml is untyped
            values = OmegaConf.to_container(cfg[section], resolve=True)
            try:
                merged = OmegaConf.merge(OmegaConf.structured(cls), values)
            except OmegaConfBaseException as error:  # a wrong type or choice: name the dotted key
                raise ConfigError(f"{section}.{error.full_key}: {error.msg}") from None
            typed[section] = OmegaConf.to_object(merged)
    optim = optim_section(cfg.optim)
    collect = typed["collect"]
    algo = algorithm_section(cfg.algorithm, collect)

    check_target_keys(cfg.env, "env")
    check_target_keys(cfg.logger, "logger")
    if not isinstance(cfg.get("evaluation"), DictConfig):
        raise ConfigError(
            "evaluation must be a callback node (_target_: fop_modules.evaluation.GreedyEvaluation, "
            "configs/config.yaml); a run always evaluates: evaluation.interval=0 plays at its start and end only"
        )
    check_target_keys(cfg.evaluation, "evaluation")
    with startup_errors("evaluation", cfg.evaluation, "GreedyEvaluation"):  # its ranges, before anything is built
        instantiate(cfg.evaluation, make_env=None)
    if cfg.get("probe") is not None:
        check_target_keys(cfg.probe, "probe")
    num_envs = cfg.env.get("num_envs")
    if isinstance(num_envs, int) and num_envs >= 1 and collect.frames_per_batch % num_envs:
        raise ConfigError(
            f"collect.frames_per_batch ({collect.frames_per_batch}) must be a multiple of "
            f"env.num_envs ({num_envs}): every collector batch holds whole steps of all envs"
        )
    limit = cfg.get("episode_limit")
    if collect.sequence_length is not None and limit is not None and collect.sequence_length < limit:
        raise ConfigError(
            f"collect.sequence_length ({collect.sequence_length}) is shorter than episode_limit "
            f"({limit}): sequence replay replays whole episodes from their first step (what a "
            f"recurrent agent acted on), so set collect.sequence_length={limit}"
        )
    reward_std = cfg.get("reward_std")
    if reward_std is not None and not 0 < reward_std < math.inf:
        raise ConfigError(f"reward_std must be a finite number > 0, or null (raw rewards), got {reward_std}")
    # the temperature group sets FOP's alpha; the other algorithms explore their own way (SAC: learned alpha)
    temperature = fop_temperature(cfg, algo) if algo.takes_temperature else None

    trainer_args = inspect.signature(L.Trainer).parameters
    for key in cfg.trainer:
        if key not in trainer_args:
            raise ConfigError(f"trainer.{key}: not an argument of lightning.Trainer")
    for key, instead in RECIPE_TRAINER_ARGS.items():
        if key in cfg.trainer:
            raise ConfigError(f"trainer.{key}: set by the recipe; {instead}")
    check_trainer(cfg.trainer)
    return Validated(algo, collect, optim, temperature)
