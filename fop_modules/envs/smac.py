"""SMACEnv: a StarCraft Multi-Agent Challenge map (oxwhirl/smac) as a TorchRL environment.

One adapter serves two backends: ``"sc2"`` drives ``smac.env.StarCraft2Env`` (StarCraft II 4.10
and the SMAC maps must be installed) and ``"fake"`` drives
:class:`~fop_modules.envs.smac_fake.FakeStarCraft2Env`, a stand-in game with the same API, so the
whole pipeline runs and is tested without StarCraft. One game per env (``batch_size == []``);
scale with TorchRL's ``SerialEnv``/``ParallelEnv``. Keys follow torchrl's ``SMACv2Wrapper`` with
``N`` agents, ``A = 6 + n_enemies`` actions:

=================================  ==========  ===============================================
key                                shape       meaning
=================================  ==========  ===============================================
``("agents", "observation")``      [N, obs]    per-agent observation (float32)
``("agents", "action_mask")``      [N, A]      ``get_avail_actions()`` (bool)
``("agents", "action")``           [N]         ``Categorical(A)``; its spec mask follows the mask
``"state"``                        [state]     global state (float32)
``"reward"``                       [1]         team reward (float32)
``"terminated"``                   [1]         battle decided (win, loss or draw)
``"truncated"``                    [1]         time limit, or the game crashed
``("info", "battle_won")``         [1]         the battle was won on this step (bool)
``("info", "episode_limit")``      [1]         the time limit ended this episode (bool)
``("info", "dead_allies")``        [1]         dead agents (int64), likewise ``dead_enemies``
=================================  ==========  ===============================================

Actions (SMAC's order): 0 no-op (the only action of a dead agent), 1 stop, 2-5 move
north/south/east/west, ``6 + j`` attack enemy ``j`` (a medivac heals ally ``j``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from fop_modules.envs.smac_fake import GAME_ERRORS

__all__ = ["SMACEnv", "StarCraftNotAvailable"]

logger = logging.getLogger(__name__)

GROUP = "agents"
ACTION_KEY = (GROUP, "action")
INFO_KEY = "info"
SMAC_INSTALL = "pip install git+https://github.com/oxwhirl/smac.git"
SC2_DOWNLOAD = "https://github.com/Blizzard/s2client-proto#linux-packages (SC2.4.10.zip)"
MAPS_DOWNLOAD = "https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip"
DEFAULT_SC2PATH = "~/StarCraftII"


class StarCraftNotAvailable(RuntimeError):
    """StarCraft II, its maps or the ``smac`` package are missing (``backend="sc2"``)."""


def _load_starcraft2env(map_name: str) -> type:
    """Returns ``smac.env.StarCraft2Env`` after checking everything the first launch needs.

    Raises:
        StarCraftNotAvailable: naming each missing piece and how to get it.
    """
    missing, env_cls = [], None
    try:
        import smac  # noqa: F401
    except ImportError:
        missing.append(f"the `smac` Python package (oxwhirl/smac): {SMAC_INSTALL}")
    else:
        try:
            from smac.env import StarCraft2Env as env_cls
        except ImportError as err:
            if (err.name or "").startswith("smac"):  # `import smac` works, `smac.env` does not
                missing.append(
                    "`smac.env`: the installed `smac` is the PyPI project SMAC3 (hyperparameter "
                    f"optimisation), not oxwhirl/smac; `pip uninstall smac`, then {SMAC_INSTALL}"
                )
            else:
                missing.append(f"`{err.name}`, needed by smac.env ({err}): {SMAC_INSTALL}")
    sc2path = Path(os.environ.get("SC2PATH", DEFAULT_SC2PATH)).expanduser()
    if not (sc2path / "Versions").is_dir():
        missing.append(
            f"StarCraft II 4.10 for Linux: no {sc2path / 'Versions'}; unzip {SC2_DOWNLOAD} and "
            f"set SC2PATH to its StarCraftII folder (default {DEFAULT_SC2PATH})"
        )
    map_file = sc2path / "Maps" / "SMAC_Maps" / f"{map_name}.SC2Map"
    if not map_file.is_file():
        missing.append(f"the SMAC map {map_file}: unzip {MAPS_DOWNLOAD} into {sc2path / 'Maps'}")
    if missing:
        raise StarCraftNotAvailable(
            "SMACEnv(backend='sc2') cannot run StarCraft II; missing:\n  - "
            + "\n  - ".join(missing)
            + "\nOr use backend='fake' to run the same pipeline on a stand-in game."
        )
    return env_cls


def _game_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of a dead or unreachable game process; pysc2's when it is installed (its
    ``protocol.ConnectionError``/``ProtocolError`` subclass ``Exception``, not the builtin
    ``ConnectionError``, and launch failures propagate out of SMAC's ``reset``)."""
    errors: list[type[BaseException]] = list(GAME_ERRORS)
    try:
        from pysc2.lib.remote_controller import RequestError
        from pysc2.lib.sc_process import SC2LaunchError

        errors += [RequestError, SC2LaunchError]
    except ImportError:
        pass
    return tuple(errors)


class SMACEnv(EnvBase):
    """A SMAC map as an unbatched TorchRL env, on the real game or the stand-in.

    Time limits: SMAC returns ``terminated=True`` when an episode reaches the map's limit and
    sets ``info["episode_limit"]`` only with ``continuing_episode=True``. Whatever that flag, this
    adapter detects the limit itself (the step count reaches :attr:`episode_limit`, the battle is
    undecided and SMAC counted a time-out) and reports ``truncated=True, terminated=False``, so
    TD targets bootstrap there; ``("info", "episode_limit")`` is set on that step.

    Resets: SMAC launches a new SC2 process on every ``reset()`` until an episode has ended,
    without closing the previous one, and adds the enemies' HP to its reward normaliser each
    time. So a reset right after a reset (TorchRL's ``check_env_specs``, a rollout after
    ``env.reset()``) returns the current initial state without touching the game, and a reset
    in the middle of a game's first episode closes the game and starts a new one.

    Crashes: when the game process dies (pysc2's ``ConnectionError``/``ProtocolError``, a
    failed launch, or SMAC's own crash result ``(0, True, {})``), the adapter closes the game,
    creates a new one (launched by the next reset), counts it in :attr:`restarts`, logs a warning
    and ends the episode as truncated with the last valid observation and zero reward. A reset
    that fails is retried the same way. After ``max_consecutive_failures`` failures with no
    successful step between them it raises ``RuntimeError``.

    The action mask is also written into the action spec, so ``env.rand_step``/``env.rollout()``
    draw available actions only. In ``SerialEnv``/``ParallelEnv`` the parent's spec does not
    follow the workers' masks: policies must sample from ``("agents", "action_mask")``, as an
    unavailable action raises ``ValueError`` here.

    Args:
        map_name: SMAC map, e.g. ``"MMM"``, ``"MMM2"``, ``"3s_vs_3z"``, ``"2c_vs_64zg"``, ``"3m"``.
        backend: ``"sc2"`` (``smac.env.StarCraft2Env``) or ``"fake"`` (``FakeStarCraft2Env``).
        seed: the game's seed. SMAC has no seed setter: the seed goes to the constructor (the
            SC2 game's ``random_seed``), so :meth:`set_seed` replaces the game by a new one,
            launched at the next reset. A game re-created after a crash gets ``seed + restarts``.
        max_consecutive_failures: game failures in a row (without a good step) before giving up.
        device: device of specs and tensors.
        **smac_kwargs: passed to the game's constructor: ``difficulty``, ``step_mul``,
            ``continuing_episode``, the ``obs_*``/``state_*`` flags, the ``reward_*`` settings ...

    Raises:
        StarCraftNotAvailable: ``backend="sc2"`` and the ``smac`` package, StarCraft II
            (``$SC2PATH``, default ``~/StarCraftII``) or the map file is missing.
        ValueError: on an unknown backend, or a step with an unavailable action.

    Examples:
        >>> env = SMACEnv("3m", backend="fake", seed=0)
        >>> env.n_agents, env.n_actions, env.episode_limit
        (3, 9, 60)
        >>> td = env.rollout(100)  # random available actions until the battle ends
        >>> td["agents", "observation"].shape[1:], td["next", "state"].shape[1:]
        (torch.Size([3, 30]), torch.Size([48]))
        >>> bool(td["agents", "action_mask"].gather(-1, td["agents", "action"][..., None]).all())
        True
        >>> bool(td["next", "done"][-1]), sorted(td["next", "info"].keys())
        (True, ['battle_won', 'dead_allies', 'dead_enemies', 'episode_limit'])
    """

    def __init__(
        self,
        map_name: str,
        backend: Literal["sc2", "fake"] = "sc2",
        seed: int | None = None,
        max_consecutive_failures: int = 3,
        device: torch.device | str | None = None,
        **smac_kwargs: Any,
    ) -> None:
        if backend == "sc2":
            game_cls = _load_starcraft2env(map_name)  # before anything else
        elif backend == "fake":
            from fop_modules.envs.smac_fake import FakeStarCraft2Env as game_cls
        else:
            raise ValueError(f"backend must be 'sc2' or 'fake', got {backend!r}.")
        if int(max_consecutive_failures) < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1: {max_consecutive_failures}")
        super().__init__(device=device, batch_size=torch.Size([]))
        self.map_name, self.backend = map_name, backend
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.restarts = 0  # games re-created after a failure
        self._game_cls, self._smac_kwargs, self._seed = game_cls, dict(smac_kwargs), seed
        self._errors = _game_errors()
        self._failures = 0  # consecutive failures
        self._fresh = False  # the game was reset and not stepped since
        self._launched = False  # the current game was reset at least once
        self._game_episodes = 0  # episodes the current game has ended
        self._episode_steps = 0
        self._last_obs: TensorDictBase | None = None
        self._game = self._make_game()
        info = self._game.get_env_info()  # no launch needed
        self._n_agents, self._n_actions = int(info["n_agents"]), int(info["n_actions"])
        self._episode_limit = int(info["episode_limit"])
        # SMAC appends the timestep to an observation whose own block already reserves its slot:
        # with obs_timestep_number the vector is one longer than get_obs_size() says
        obs_dim = int(info["obs_shape"]) + int(bool(smac_kwargs.get("obs_timestep_number")))
        state_dim = int(info["state_shape"])
        if smac_kwargs.get("obs_instead_of_state"):
            state_dim = self._n_agents * obs_dim
        self._make_specs(obs_dim, state_dim, int(self._game.n_enemies))

    @property
    def n_agents(self) -> int:
        """Number of agents ``N``."""
        return self._n_agents

    @property
    def n_actions(self) -> int:
        """Actions per agent ``A = 6 + n_enemies``."""
        return self._n_actions

    @property
    def episode_limit(self) -> int:
        """The map's time limit in agent steps (SMAC's registry)."""
        return self._episode_limit

    @property
    def game(self) -> Any:
        """The current ``StarCraft2Env`` (or fake): ``get_stats()``, ``save_replay()`` ..."""
        return self._game

    def _make_game(self) -> Any:
        seed = None if self._seed is None else self._seed + self.restarts
        return self._game_cls(map_name=self.map_name, seed=seed, **self._smac_kwargs)

    def _make_specs(self, obs_dim: int, state_dim: int, n_enemies: int) -> None:
        N, A, dev = self._n_agents, self._n_actions, self.device
        flag = Categorical(n=2, shape=(1,), dtype=torch.bool, device=dev)
        self.observation_spec = Composite(
            {
                GROUP: Composite(
                    observation=Unbounded(shape=(N, obs_dim), dtype=torch.float32, device=dev),
                    action_mask=Binary(n=A, shape=(N, A), dtype=torch.bool, device=dev),
                    shape=(N,),
                    device=dev,
                ),
                "state": Unbounded(shape=(state_dim,), dtype=torch.float32, device=dev),
                INFO_KEY: Composite(
                    battle_won=flag.clone(),
                    episode_limit=flag.clone(),
                    dead_allies=Bounded(0, N, shape=(1,), dtype=torch.int64, device=dev),
                    dead_enemies=Bounded(0, n_enemies, shape=(1,), dtype=torch.int64, device=dev),
                    device=dev,
                ),
            },
            device=dev,
        )
        action = Categorical(n=A, shape=(N,), dtype=torch.int64, device=dev)
        self.full_action_spec = Composite(
            {GROUP: Composite(action=action, shape=(N,), device=dev)}, device=dev
        )
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32, device=dev)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), device=dev
        )

    def _observe(self) -> TensorDictBase:
        """Observation, mask and state of the game now; updates the action spec's mask."""
        obs = np.asarray(self._game.get_obs(), dtype=np.float32)  # [N, obs]
        mask = np.asarray(self._game.get_avail_actions(), dtype=bool)  # [N, A]
        state = np.asarray(self._game.get_state(), dtype=np.float32)  # [state]
        mask_t = torch.as_tensor(mask, device=self.device)
        self.full_action_spec[ACTION_KEY].update_mask(mask_t)  # random actions stay available
        agents = TensorDict(
            {"observation": torch.as_tensor(obs, device=self.device), "action_mask": mask_t},
            batch_size=(self._n_agents,),
            device=self.device,
        )
        out = TensorDict(
            {GROUP: agents, "state": torch.as_tensor(state, device=self.device)},
            batch_size=(),
            device=self.device,
        )
        self._last_obs = out.clone()
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        if not self._fresh and self._launched and self._game_episodes == 0:
            # SMAC would launch a second SC2 process without closing the first and add the
            # enemies' HP to max_reward again: start over with a new game instead.
            self._replace_game()
        while not self._fresh:  # a failed launch re-creates the game and retries
            try:
                self._game.reset()
            except self._errors as err:
                self._on_failure(err)
            else:
                self._fresh = self._launched = True
        self._episode_steps = 0
        out = self._observe()
        out[INFO_KEY] = self.observation_spec[INFO_KEY].zero()
        out.update(self.full_done_spec.zero())
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(ACTION_KEY)  # [N] int64
        self._check_available(action)
        timeouts = self._game.timeouts
        self._fresh = False
        try:
            reward, terminated, info = self._game.step(action.tolist())
        except self._errors as err:
            return self._crashed(err)
        if not info:  # SMAC caught a dead game, relaunched it and returned (0, True, {})
            return self._crashed(None)
        self._failures = 0
        self._episode_steps += 1
        self._game_episodes += int(bool(terminated))
        # A time-out: the limit is reached with the battle undecided (SMAC checks the battle
        # first and counts a time-out only then), whatever continuing_episode says.
        timed_out = bool(terminated) and self._episode_steps >= self._episode_limit and (
            bool(info.get("episode_limit", False)) or self._game.timeouts > timeouts
        )
        out = self._observe()
        dev = self.device
        out.update(
            {
                "reward": torch.tensor([float(reward)], dtype=torch.float32, device=dev),  # [1]
                "done": torch.tensor([bool(terminated)], device=dev),  # [1]
                "terminated": torch.tensor([bool(terminated) and not timed_out], device=dev),
                "truncated": torch.tensor([timed_out], device=dev),
                INFO_KEY: {  # [1] each; SMAC omits the keys on its crash path (handled above)
                    "battle_won": torch.tensor([bool(info.get("battle_won", False))], device=dev),
                    "episode_limit": torch.tensor([timed_out], device=dev),
                    "dead_allies": torch.tensor([int(info.get("dead_allies", 0))], device=dev),
                    "dead_enemies": torch.tensor([int(info.get("dead_enemies", 0))], device=dev),
                },
            }
        )
        return out

    def _check_available(self, action: torch.Tensor) -> None:
        """Raises ``ValueError`` before SMAC's assert (which also corrupts its last action)."""
        mask = self._last_obs.get((GROUP, "action_mask"))  # [N, A]
        if action.shape != (self._n_agents,):
            raise ValueError(f"expected actions of shape [{self._n_agents}]: {tuple(action.shape)}")
        index = action.clamp(0, self._n_actions - 1).unsqueeze(-1)  # [N, 1]
        ok = (action >= 0) & (action < self._n_actions) & mask.gather(-1, index).squeeze(-1)
        if not bool(ok.all()):
            bad = torch.nonzero(~ok).flatten().tolist()
            raise ValueError(
                f"unavailable actions {[int(action[i]) for i in bad]} for agents {bad} on "
                f"{self.map_name}; sample actions with ('agents', 'action_mask')."
            )

    def _crashed(self, err: BaseException | None) -> TensorDictBase:
        """Relaunches the game and ends the episode as truncated on the last valid observation."""
        self._on_failure(err)
        out = self._last_obs.clone()
        out[INFO_KEY] = self.observation_spec[INFO_KEY].zero()  # SMAC returns an empty info
        out.update(self.full_done_spec.zero())
        out["done"].fill_(True)
        out["truncated"].fill_(True)
        out["reward"] = self.reward_spec.zero()  # [1]
        return out

    def _on_failure(self, err: BaseException | None) -> None:
        """Counts a failure; closes and re-creates the game, or gives up after too many."""
        self._failures += 1
        what = "SMAC's crash result (0, True, {})"
        if err is not None:
            what = f"{type(err).__name__}: {err}"
        if self._failures >= self.max_consecutive_failures:
            raise RuntimeError(
                f"StarCraft II failed {self._failures} times in a row on {self.map_name} "
                f"(last: {what}); giving up. Check the SC2 logs, memory and $SC2PATH, or raise "
                "max_consecutive_failures."
            ) from err
        self.restarts += 1
        logger.warning(
            "StarCraft II failed on %s (%s); relaunching it (restart %d, failure %d in a row).",
            self.map_name, what, self.restarts, self._failures,
        )  # fmt: skip
        self._replace_game()

    def _replace_game(self) -> None:
        try:
            self._game.close()
        except Exception:  # a dead process may fail to close in turn; it is dropped anyway
            logger.debug("closing the failed game raised", exc_info=True)
        self._game = self._make_game()
        self._fresh = self._launched = False
        self._game_episodes = 0  # episodes the current game has ended

    def _set_seed(self, seed: int | None) -> None:
        # SMAC has no seed setter: a new game with this seed, launched at the next reset.
        self._seed = seed
        self._replace_game()

    def close(self, *, raise_if_closed: bool = True) -> None:
        game = self.__dict__.get("_game")
        if game is not None:
            game.close()
        super().close(raise_if_closed=raise_if_closed)
