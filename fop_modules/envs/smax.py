"""SMAXEnv: JaxMARL's SMAX (StarCraft micro-management in JAX) as a batched TorchRL env.

SMAX (JaxMARL 0.2.0) re-implements SMAC's unit micro-management in JAX. This adapter keeps ``E``
copies of a scenario as one batched JAX state pytree and advances them with a single jitted,
vmapped call per step, so ``num_envs`` costs one dispatch, not a Python loop. By default the
enemies follow SMAX's scripted heuristic (``HeuristicEnemySMAX``, as in JaxMARL's benchmarks).

Keys follow the SMAC adapter's layout (torchrl's ``SMACv2Wrapper``) with a leading ``[E]``
batch dimension, ``N`` allies, ``A = 5 + n_enemies`` actions:

=================================  =============  ============================================
key                                shape          meaning
=================================  =============  ============================================
``("agents", "observation")``      [E, N, obs]    per-ally unit-list observation (float32)
``("agents", "action_mask")``      [E, N, A]      available actions (bool)
``("agents", "action")``           [E, N]         ``Categorical(A)``, masked by the mask above
``"state"``                        [E, state]     global ``world_state`` of both teams (positions
                                                 and weapon cooldowns scaled as SMAC's: below)
``"reward"``                       [E, 1]         shared team reward (max return 2.0)
``"terminated"``                   [E, 1]         battle decided (win, loss or draw)
``"truncated"``                    [E, 1]         time limit hit with both teams alive
``("info", "battle_won")``         [E, 1]         every enemy dead and an ally alive (bool)
``("info", "episode_limit")``      [E, 1]         equals ``truncated``
``("info", "dead_allies")``        [E, 1]         dead allies (int64), likewise dead_enemies
=================================  =============  ============================================

Actions (SMAX's order, not SMAC's): 0-3 move north/east/south/west, 4 stop, ``5 + j`` attack
enemy ``j``. SMAX has no no-op: a dead unit's only available action is stop (4).

The state scales each unit's features as SMAC's ``get_state`` does. The weapon cooldown is the
fraction of its type's cooldown still to run (0 when ready), as SMAX's own observations also
give it: JaxMARL's ``get_world_state`` gives the raw seconds, which keep falling while a unit does
not fire (to about -50 at the time limit: SMAX never clips the cooldown at 0), so that a mixer's
hypernetworks met ever larger inputs as a policy learnt to hold fire; QMIX's Q_tot then drifted
above any return the game pays. A position is its offset from the map's centre over the map's
size, ``(x - w/2) / w`` in [-0.5, 0.5] (JaxMARL: map units, 0 to 32); a dead unit's row stays
zero. ``world_state="jaxmarl"`` keeps JaxMARL's values, ``"cooldowns"`` scales the cooldowns only
(the state of the runs made before positions were scaled: their resume needs it).
"""

from __future__ import annotations

import functools
import io
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from fop_modules.optional import require

__all__ = ["SMAXEnv"]

GROUP = "agents"
ACTION_KEY = (GROUP, "action")
INFO_KEY = "info"
STOP_ACTION = 4  # the only action of a dead unit
# Scenarios JaxMARL 0.2.0 does not register: name -> (unit types, allies first, n_allies,
# n_enemies). Unit types: 0 marine, 1 marauder, 2 stalker, 3 zealot, 4 zergling, 5 hydralisk.
EXTRA_SCENARIOS = {"3s_vs_3z": ((2, 2, 2, 3, 3, 3), 3, 3)}


class _Kernels(NamedTuple):
    """A SMAX env with its jitted batched kernels (shared by all adapters of one config)."""

    env: Any  # HeuristicEnemySMAX or SMAX
    reset: Any  # (key, state, mask [E]) -> (key, state, (obs, world_state, avail))
    step: Any  # (key, state, action [E, N]) -> (key, state, outputs)
    empty_state: Any  # (E,) -> zero state pytree of batch E


def _import_smax():
    # jaxmarl prints on import, and its mabrax module then sets sys.stdout/stderr to
    # sys.__stdout__/__stderr__ (dropping any capture, e.g. doctest's): silence, then restore.
    saved = sys.stdout, sys.stderr, sys.__stdout__
    sys.stdout = sys.__stdout__ = io.StringIO()
    try:
        # the package before its submodule: an already imported submodule hides a missing parent
        jax, jnp, _, smax = (
            require(name, needed_for="SMAXEnv", extra="smax")
            for name in ("jax", "jax.numpy", "jaxmarl.environments", "jaxmarl.environments.smax")
        )
    finally:
        sys.stdout, sys.stderr, sys.__stdout__ = saved
    return jax, jnp, smax


WORLD_STATES = ("smac", "cooldowns", "jaxmarl")  # SMAXEnv(world_state=...): the state's scaling


@functools.lru_cache(maxsize=None)
def _cached_kernels(scenario: str, heuristic_enemy: bool, world_state: str, kwargs: tuple) -> _Kernels:
    return _make_kernels(scenario, heuristic_enemy, world_state, dict(kwargs))


def _make_kernels(scenario: str, heuristic_enemy: bool, state_scaling: str, kwargs: dict) -> _Kernels:
    """Builds the SMAX env and its jitted ``reset``/``step`` over a leading env axis."""
    jax, jnp, smax = _import_smax()
    if scenario in EXTRA_SCENARIOS and scenario not in smax.smax_env.MAP_NAME_TO_SCENARIO:
        types, n_allies, n_enemies = EXTRA_SCENARIOS[scenario]
        unit_types = jnp.array(types, dtype=jnp.uint8)  # no SMACv2 unit/position generation
        extra = smax.Scenario(unit_types, n_allies, n_enemies, False, False)
        smax.register_scenario(scenario, extra)
    env_cls = smax.HeuristicEnemySMAX if heuristic_enemy else smax.SMAX
    env = env_cls(scenario=smax.map_name_to_scenario(scenario), **kwargs)
    allies = [f"ally_{i}" for i in range(env.num_allies)]
    enemies = [f"enemy_{i}" for i in range(env.num_enemies)]
    n_allies = env.num_allies

    features = len(env.own_features)  # per unit: health, x, y, weapon cooldown, type one-hot
    cooldown = env.own_features.index("weapon_cooldown")
    position = [env.own_features.index("position_x"), env.own_features.index("position_y")]
    cooldowns = jnp.asarray(env.unit_type_weapon_cooldowns)  # seconds, per unit type

    centre = jnp.array([env.map_width / 2, env.map_height / 2])
    size = jnp.array([env.map_width, env.map_height])

    def world_state(state):  # [state]: cooldowns and positions scaled as SMAC's get_state scales them
        raw = env.get_world_state(state)
        if state_scaling == "jaxmarl":
            return raw
        types = (state.state if heuristic_enemy else state).unit_types
        n = types.shape[0] * features
        units = raw[:n].reshape(types.shape[0], features)
        units = units.at[:, cooldown].set(jnp.maximum(units[:, cooldown], 0.0) / cooldowns[types])  # dead: 0 stays 0
        if state_scaling == "smac":
            alive = (state.state if heuristic_enemy else state).unit_alive[:, None]
            units = units.at[:, position].set(jnp.where(alive, (units[:, position] - centre) / size, 0.0))  # dead: 0
        return jnp.concatenate([units.reshape(-1), raw[n:]])

    def observe(state):  # one env -> obs [N, obs], world_state [state], avail [N, A]
        obs, avail = env.get_obs(state), env.get_avail_actions(state)
        return (
            jnp.stack([obs[a] for a in allies]),
            world_state(state),
            jnp.stack([avail[a] for a in allies]).astype(bool),
        )

    def step_one(key, state, action):  # action [N] int32
        actions = {a: action[i] for i, a in enumerate(allies)}
        if not heuristic_enemy:  # plain SMAX: enemies pick uniformly among available actions
            key, enemy_key = jax.random.split(key)
            avail = env.get_avail_actions(state)
            logits = jnp.log(jnp.stack([avail[e] for e in enemies]).astype(jnp.float32))
            enemy_action = jax.random.categorical(enemy_key, logits)  # [n_enemies]
            actions.update({e: enemy_action[j] for j, e in enumerate(enemies)})
        _, state, reward, done, _ = env.step_env(key, state, actions)  # no auto-reset
        alive = (state.state if heuristic_enemy else state).unit_alive  # [N + n_enemies]
        allies_alive, enemies_alive = alive[:n_allies].any(), alive[n_allies:].any()
        done = done["__all__"]  # all allies dead | all enemies dead | time limit
        truncated = done & allies_alive & enemies_alive  # time limit, battle undecided
        won = done & allies_alive & ~enemies_alive  # same test as SMAX's won_battle_bonus
        dead = ((~alive[:n_allies]).sum(), (~alive[n_allies:]).sum())
        return state, (*observe(state), reward[allies[0]], done & ~truncated, truncated, won, *dead)

    @jax.jit
    def reset(key, state, mask):  # mask [E] bool: envs that get a fresh episode
        key, sub = jax.random.split(key)
        _, fresh = jax.vmap(env.reset)(jax.random.split(sub, mask.shape[0]))

        def select(new, old):  # broadcast the [E] mask over each leaf [E, ...]
            return jnp.where(mask.reshape(mask.shape + (1,) * (new.ndim - 1)), new, old)

        state = jax.tree.map(select, fresh, state)
        return key, state, jax.vmap(observe)(state)

    @jax.jit
    def step(key, state, action):  # action [E, N] int32
        key, sub = jax.random.split(key)
        state, out = jax.vmap(step_one)(jax.random.split(sub, action.shape[0]), state, action)
        obs, world_state, avail, *flags = out  # flags: 6 arrays of shape [E]
        return key, state, (obs, world_state, avail, *(f[:, None] for f in flags))  # [E, 1]

    def empty_state(num_envs: int):  # placeholder, replaced wholesale by the first reset
        keys = jax.ShapeDtypeStruct((num_envs, 2), jnp.uint32)
        shapes = jax.eval_shape(lambda k: jax.vmap(env.reset)(k)[1], keys)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    return _Kernels(env, reset, step, empty_state)


class SMAXEnv(EnvBase):
    """``num_envs`` copies of a JaxMARL SMAX scenario, stepped by one jitted vmapped call.

    SMAX auto-resets inside ``step``; this adapter instead steps with ``step_env`` so that
    ``"next"`` holds the terminal observation, and resets only through :meth:`reset`, which
    honours a partial ``"_reset"`` mask ``[E, 1]`` (TorchRL collectors reset the done envs):
    the masked envs get fresh episodes, the others keep their state untouched.

    Episodes end when one team is wiped out (``terminated``) or after ``max_steps + 1`` steps
    (SMAX checks its limit before incrementing its step counter) with both teams alive, which
    is a time-out: ``truncated``, not ``terminated``, so TD targets bootstrap there. Invalid
    actions are not checked by SMAX (they do nothing); use the action mask. A dead unit's only
    available action is stop (4): SMAX has no no-op. The mask is also set on the action spec,
    so ``env.rand_action``/``env.rollout()`` draw only available actions; ``RandomPolicy``
    clones the spec once, so policies should read ``("agents", "action_mask")`` instead.

    Args:
        scenario: SMAX map name, e.g. ``"3m"``, ``"2s3z"``, ``"5m_vs_6m"`` (any name in
            ``jaxmarl.environments.smax.smax_env.MAP_NAME_TO_SCENARIO``) or ``"3s_vs_3z"``
            (registered here from :data:`EXTRA_SCENARIOS`).
        num_envs: number of parallel copies ``E`` (``batch_size == [E]``).
        seed: seed of the JAX PRNG key (one key per env is split from it at every reset and
            step); ``None`` draws it from torch's global RNG.
        heuristic_enemy: enemies follow SMAX's scripted heuristic (``HeuristicEnemySMAX``);
            ``False`` uses plain ``SMAX`` with enemies acting uniformly at random among their
            available actions.
        world_state: ``"smac"``: the state scaled as SMAC's (see the module's docstring);
            ``"jaxmarl"``: as JaxMARL's ``get_world_state`` gives it, positions in map units and
            weapon cooldowns in raw seconds that fall below 0 while a unit does not fire;
            ``"cooldowns"``: the cooldowns scaled, the positions in map units.
        device: device of specs and tensors (JAX runs on its own default device).
        **smax_kwargs: passed to the SMAX constructor, e.g. ``max_steps`` (default 100),
            ``see_enemy_actions``, ``walls_cause_death``, ``won_battle_bonus`` and, with the
            heuristic enemy, ``attack_mode`` (``"closest"``/``"random"``) or ``enemy_shoots``.

    Raises:
        MissingDependency: if JaxMARL/JAX are missing (the message names the install command).
        ValueError: on an unknown scenario, ``num_envs < 1`` or a non-discrete ``action_type``.

    Examples:
        >>> import importlib.util, pytest
        >>> if not importlib.util.find_spec("jaxmarl"): pytest.skip("needs fop_modules[smax]")
        >>> env = SMAXEnv("3m", num_envs=4, seed=0)
        >>> env.n_agents, env.n_actions, env.episode_limit
        (3, 8, 101)
        >>> td = env.rollout(5)  # random actions, drawn among the available ones only
        >>> td["agents", "observation"].shape, td["next", "state"].shape
        (torch.Size([4, 5, 3, 75]), torch.Size([4, 5, 72]))
        >>> bool(td["agents", "action_mask"].gather(-1, td["agents", "action"][..., None]).all())
        True
    """

    def __init__(
        self,
        scenario: str = "3m",
        num_envs: int = 1,
        seed: int | None = None,
        heuristic_enemy: bool = True,
        world_state: str = "smac",
        device: torch.device | str | None = None,
        **smax_kwargs: Any,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        if world_state not in WORLD_STATES:
            raise ValueError(f"world_state must be one of {list(WORLD_STATES)}, got {world_state!r}")
        if smax_kwargs.get("action_type", "discrete") != "discrete":
            raise ValueError("SMAXEnv supports action_type='discrete' only.")
        jax, _, smax = _import_smax()
        known = set(smax.smax_env.MAP_NAME_TO_SCENARIO) | set(EXTRA_SCENARIOS)
        if scenario not in known:
            raise ValueError(f"Unknown SMAX scenario {scenario!r}; known: {sorted(known)}.")
        super().__init__(device=device, batch_size=torch.Size([int(num_envs)]))
        self._jax = jax
        self.scenario = scenario
        heuristic_enemy, kwargs = bool(heuristic_enemy), tuple(sorted(smax_kwargs.items()))
        try:  # equal configs share compiled kernels; unhashable kwargs (arrays) get their own
            hash(kwargs)
            kernels = _cached_kernels(scenario, heuristic_enemy, world_state, kwargs)
        except TypeError:
            kernels = _make_kernels(scenario, heuristic_enemy, world_state, smax_kwargs)
        self._kernels = kernels
        self._smax = kernels.env
        self._state = kernels.empty_state(int(num_envs))  # JAX pytree, leaves [E, ...]
        self._set_seed(seed)
        self._make_specs()

    @property
    def n_agents(self) -> int:
        """Number of allied agents ``N``."""
        return int(self._smax.num_allies)

    @property
    def n_enemies(self) -> int:
        """Number of enemy units."""
        return int(self._smax.num_enemies)

    @property
    def n_actions(self) -> int:
        """Actions per agent ``A = 5 + n_enemies`` (4 moves, stop, one attack per enemy)."""
        return int(self._smax.num_ally_actions)

    @property
    def episode_limit(self) -> int:
        """Longest possible episode in env steps: ``max_steps + 1`` (SMAX's off-by-one)."""
        return int(self._smax.max_steps) + 1

    @property
    def jax_env(self) -> Any:
        """The JaxMARL env these copies run (``HeuristicEnemySMAX`` or ``SMAX``), e.g. for
        ``jaxmarl.viz.visualizer.SMAXVisualizer``."""
        return self._smax

    def jax_state(self, index: int = 0) -> Any:
        """The current JAX state pytree of copy ``index`` (what ``jax_env.step_env`` takes)."""
        if not 0 <= index < self.batch_size[0]:
            raise IndexError(f"copy {index} of {self.batch_size[0]}")
        return self._jax.tree.map(lambda leaf: leaf[index], self._state)

    def _make_specs(self) -> None:
        E, N, A, dev = self.batch_size[0], self.n_agents, self.n_actions, self.device
        flag = Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=dev)
        self.observation_spec = Composite(
            {
                GROUP: Composite(
                    observation=Unbounded(shape=(E, N, self._smax.obs_size), device=dev),
                    action_mask=Binary(n=A, shape=(E, N, A), dtype=torch.bool, device=dev),
                    shape=(E, N),
                    device=dev,
                ),
                "state": Unbounded(shape=(E, self._smax.state_size), device=dev),
                INFO_KEY: Composite(
                    battle_won=flag.clone(),
                    episode_limit=flag.clone(),
                    dead_allies=Bounded(0, N, shape=(E, 1), dtype=torch.int64, device=dev),
                    dead_enemies=Bounded(
                        0, self.n_enemies, shape=(E, 1), dtype=torch.int64, device=dev
                    ),
                    shape=(E,),
                    device=dev,
                ),
            },
            shape=(E,),
            device=dev,
        )
        self.full_action_spec = Composite(
            {
                GROUP: Composite(
                    action=Categorical(n=A, shape=(E, N), dtype=torch.int64, device=dev),
                    shape=(E, N),
                    device=dev,
                )
            },
            shape=(E,),
            device=dev,
        )
        self.reward_spec = Unbounded(shape=(E, 1), device=dev)
        self.done_spec = Composite(
            done=flag.clone(),
            terminated=flag.clone(),
            truncated=flag.clone(),
            shape=(E,),
            device=dev,
        )

    def _to_torch(self, *arrays: Any) -> list[torch.Tensor]:
        """JAX arrays -> torch tensors, zero-copy on CPU (they alias read-only JAX buffers)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            out = [torch.from_numpy(np.asarray(a)) for a in arrays]
        return [t.to(self.device) for t in out]

    def _observation(self, obs: Any, world_state: Any, avail: Any) -> TensorDict:
        """Observation, mask [E, N, A] and state as a td of batch [E]; updates the spec's mask."""
        obs, world_state, mask = self._to_torch(obs, world_state, avail)
        self.full_action_spec[ACTION_KEY].update_mask(mask)  # random actions stay available
        agents = TensorDict(
            {"observation": obs, "action_mask": mask},
            batch_size=(*self.batch_size, self.n_agents),
            device=self.device,
        )
        return TensorDict(
            {GROUP: agents, "state": world_state}, batch_size=self.batch_size, device=self.device
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        E = self.batch_size[0]
        reset = None if tensordict is None else tensordict.get("_reset", None)  # [E, 1]
        if reset is None:
            mask = np.ones(E, dtype=bool)
        else:
            mask = reset.reshape(E).cpu().numpy()
        self._key, self._state, observed = self._kernels.reset(self._key, self._state, mask)
        out = self._observation(*observed)
        out[INFO_KEY] = self.observation_spec[INFO_KEY].zero()
        out.update(self.full_done_spec.zero())
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(ACTION_KEY).detach().to("cpu", torch.int32).numpy()  # [E, N]
        self._key, self._state, out = self._kernels.step(self._key, self._state, action)
        obs, world_state, avail, *flags = out
        reward, terminated, truncated, won, dead_allies, dead_enemies = self._to_torch(*flags)
        result = self._observation(obs, world_state, avail)
        result.update(
            {
                "reward": reward,  # [E, 1] team reward
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
                INFO_KEY: {
                    "battle_won": won,
                    "episode_limit": truncated.clone(),
                    "dead_allies": dead_allies.long(),
                    "dead_enemies": dead_enemies.long(),
                },
            }
        )
        return result

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self._key = self._jax.random.PRNGKey(int(seed) % 2**32)
