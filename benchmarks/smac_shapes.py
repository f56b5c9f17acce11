"""SMAC-shaped FOP learners and synthetic episodes for the benchmarks, built by the real pipeline.

The learner comes from ``recipes/train.py`` (``make_env``, ``FOPConfig.build`` and its parts' ``learner``)
with ``+experiment=smac_<map>`` and ``env.backend=fake`` (the stand-in game has the real maps'
observation, state and action sizes). Episodes are random tensors with the env's own keys, shapes
and dtypes (``env.fake_tensordict()``), stored through the module's replay buffer and sampled
with its ``SliceSampler`` exactly as in training.

:class:`ScaledSMACShapes` gives the same pipeline any number of agents (benchmarks/scaling.py), and
:func:`recipe_config` composes any experiment as the recipe does (benchmarks/throughput.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import lightning as L  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import schema  # noqa: E402  (recipes/schema.py)
from fop_modules.envs.smac import SMACEnv  # noqa: E402
from fop_modules.lightning import FOPLightningModule  # noqa: E402
from train import make_env  # noqa: E402  (recipes/train.py)

MAPS = {"MMM": "smac_mmm", "MMM2": "smac_mmm2", "3s_vs_3z": "smac_3s_vs_3z", "2c_vs_64zg": "smac_2c_vs_64zg"}


def recipe_config(experiment: str, overrides: list[str] = ()) -> DictConfig:
    """configs/config.yaml with ``+experiment=<experiment>`` and Hydra overrides, as
    ``python recipes/train.py +experiment=<experiment> <overrides>`` composes it."""
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"+experiment={experiment}", *overrides])


def config(map_name: str, overrides: list[str] = ()) -> DictConfig:
    """The authors' SMAC config for one map (fake backend), with Hydra overrides."""
    return recipe_config(MAPS[map_name], ["env.backend=fake", *overrides])


class ScaledSMACShapes(SMACEnv):
    """A SMAC map's per-agent shapes for ``n_agents`` agents against as many enemies: specs only.

    Each agent keeps the map's observation and action sizes (they do not grow with the team
    here, unlike SMAC's, so that only the number of agents varies), and the state grows linearly
    as SMAC's does: the map's state per (ally, enemy) pair, ally features and last action
    included, times ``n_agents``. The map must have as many enemies as agents (3s_vs_3z: 36
    observation features, 9 actions, 18 state features per agent). Only the specs are scaled:
    the game behind them is still the map's, so the env serves ``fake_tensordict()`` and is never
    reset or stepped.

    Args:
        n_agents: agents (and enemies) of the scaled team.
        episode_limit: the time limit reported by :attr:`episode_limit`.
        **smac_env_kwargs: :class:`~fop_modules.envs.smac.SMACEnv`'s arguments (``map_name``,
            ``backend``, the game's flags) for the map whose per-agent shapes are kept.
    """

    def __init__(self, n_agents: int, episode_limit: int, **smac_env_kwargs) -> None:
        super().__init__(**smac_env_kwargs)
        if n_agents < 1 or episode_limit < 1:
            raise ValueError(f"n_agents and episode_limit must be >= 1, got {n_agents}, {episode_limit}")
        if self.game.n_enemies != self.n_agents:
            raise ValueError(
                f"{self.map_name} has {self.n_agents} agents and {self.game.n_enemies} enemies: "
                "the state scales per (ally, enemy) pair, pick a map with as many of each (3s_vs_3z, 3m)"
            )
        obs_dim = self.full_observation_spec["agents", "observation"].shape[-1]
        state_per_agent = self.full_observation_spec["state"].shape[-1] // self.n_agents
        self._n_agents, self._episode_limit = n_agents, episode_limit
        self._make_specs(obs_dim, state_per_agent * n_agents, n_enemies=n_agents)

    def _reset(self, tensordict=None, **kwargs):
        raise NotImplementedError("ScaledSMACShapes has specs only (fake_tensordict); it is never reset")

    def _step(self, tensordict):
        raise NotImplementedError("ScaledSMACShapes has specs only (fake_tensordict); it is never stepped")


def recipe_learner(cfg: DictConfig) -> tuple[FOPLightningModule, object]:
    """(module, env) as ``recipes/train.py`` builds them for the composed ``cfg``."""
    typed = schema.validate(cfg)
    env = make_env(cfg.env, typed.algorithm)
    module = typed.algorithm.build(env).learner(None, collect=typed.collect, optim=typed.optim,
                                                temperature=typed.temperature)
    return module, env


def attach_optimizers(module: FOPLightningModule, cfg: DictConfig) -> None:
    """What Lightning's ``fit()`` would give ``module.update``: optimisers, backward, clipping.
    A trainer that never fits: its strategy answers the update's finite-loss check, and its
    precision plugin gives trainer.precision's autocast for the config's accelerator."""
    module.trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, logger=False,
                               enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False,
                               precision=cfg.trainer.precision)
    optimizers = module.configure_optimizers()
    module.optimizers = lambda: optimizers
    module.manual_backward = lambda loss: loss.backward()
    module.clip_gradients = lambda opt, gradient_clip_val: torch.nn.utils.clip_grad_norm_(
        [p for g in opt.param_groups for p in g["params"]], gradient_clip_val)


def learner(map_name: str, overrides: list[str] = ()) -> tuple[FOPLightningModule, object]:
    """(module with its optimisers attached, env) in the authors' configuration for ``map_name``."""
    cfg = config(map_name, overrides)
    module, env = recipe_learner(cfg)
    attach_optimizers(module, cfg)
    return module, env


def scaled_learner(n_agents: int, episode_limit: int, map_name: str = "3s_vs_3z",
                   overrides: list[str] = ()) -> tuple[FOPLightningModule, ScaledSMACShapes]:
    """:func:`learner` in the authors' configuration for ``map_name`` on :class:`ScaledSMACShapes`
    (``n_agents`` agents, ``map_name``'s per-agent sizes), replaying whole episodes of up to
    ``episode_limit`` steps."""
    target = f"{ScaledSMACShapes.__module__}.{ScaledSMACShapes.__qualname__}"
    return learner(map_name, [f"env._target_={target}", f"+env.n_agents={n_agents}",
                              f"+env.episode_limit={episode_limit}", f"episode_limit={episode_limit}",
                              *overrides])


def episode(env, length: int, traj_id: int, generator: torch.Generator) -> TensorDictBase:
    """One random episode [length] with the env's keys and dtypes, laid out as the collector
    writes it: ``("next", k)`` of a step is ``k`` of the following step, ``is_init`` at the first
    step, ``done`` at the last, one-hot last actions (zeros at the start) and
    ``("collector", "traj_ids")``."""
    template = env.fake_tensordict()
    td = template.expand(length).clone()
    for key, value in td.items(True, True):
        if value.dtype.is_floating_point:
            value.copy_(torch.rand(value.shape, generator=generator))
        else:
            value.zero_()
    n_actions = td["agents", "action_mask"].shape[-1]
    action = torch.randint(n_actions, td["agents", "action"].shape, generator=generator)
    td["agents", "action"] = action
    td["agents", "action_mask"].fill_(True)
    td["next", "agents", "action_mask"].fill_(True)
    if ("agents", "last_action") in td.keys(True):
        one_hot = torch.nn.functional.one_hot(action, n_actions).float()
        td["next", "agents", "last_action"] = one_hot
        td["agents", "last_action"] = torch.cat([torch.zeros_like(one_hot[:1]), one_hot[:-1]])
    td["is_init"][0] = True
    for key in ("done", "terminated"):
        td["next", key][-1] = True
    flags = ("done", "terminated", "truncated", "is_init")  # not carried: reset at every step
    for key, value in td.exclude("next", *flags).items(True, True):  # the collector carries next -> root
        next_key = ("next", *(key if isinstance(key, tuple) else (key,)))
        if next_key in td.keys(True, True):
            td[next_key][:-1] = value[1:]
    td["collector", "traj_ids"] = torch.full((length,), traj_id)
    return td


def fill(module: FOPLightningModule, env, episodes: int, seed: int = 0) -> None:
    """Extends the module's replay buffer by ``episodes`` episodes of random lengths up to the
    limit, one after another in collector batches of ``collect.frames_per_batch`` frames (the
    authors' single game: an episode may span two batches)."""
    generator = torch.Generator().manual_seed(seed)
    limit, frames_per_batch = module.collect.sequence_length, module.collect.frames_per_batch
    pending = []  # episodes not yet written, at most one batch's worth: few temporaries
    for i in range(episodes):
        pending.append(episode(env, int(torch.randint(1, limit + 1, (), generator=generator)), i, generator))
        last = i == episodes - 1
        while pending and (last or sum(len(e) for e in pending) >= frames_per_batch):
            stream = torch.cat(pending)
            module.buffer.extend(stream[:frames_per_batch])
            pending = [stream[frames_per_batch:]] if len(stream) > frames_per_batch else []
