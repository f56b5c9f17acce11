"""FakeStarCraft2Env: a pure-Python stand-in for SMAC's ``smac.env.StarCraft2Env`` (oxwhirl/smac 1.0.0).

StarCraft II cannot be installed everywhere (CI, machines without the 4.10 Linux package), so this
class copies the public contract of ``StarCraft2Env`` and replaces the game by a small battle
simulation. Code written against SMAC (the :class:`~fop_modules.envs.smac.SMACEnv` adapter,
PyMARL-style runners) runs on it unchanged. The tags in parentheses name where SMAC 1.0.0 does
the same: ``[init]`` ``StarCraft2Env.__init__``, ``[maps]`` ``smac/env/starcraft2/maps/smac_maps.py``,
``[sizes]`` ``get_obs_size``/``get_state_size``, ``[layout]`` ``get_obs_agent``/``get_state``,
``[avail]`` ``get_avail_agent_actions``, ``[step]`` ``reset``/``step``/``_launch``, ``[info]``
``get_env_info``, ``[crash]`` ``step``'s ``protocol.ProtocolError``/``ConnectionError`` handler
(all in ``smac/env/starcraft2/starcraft2.py`` unless named).

Faithful to SMAC (the same code paths, re-implemented):

* the constructor's arguments, order and defaults ([init]) and the registry entries of the maps in
  :data:`MAP_PARAMS` ([maps]); ``n_actions = 6 + n_enemies``; the obs and state size formulas with
  every flag ([sizes]), including the ``obs_timestep_number`` quirk (each observation is one longer
  than ``get_obs_size()`` and float64);
* the observation and state layouts ([layout]): blocks and their order, sight range 9, normalisers,
  type one-hots (allies sorted by ``(unit_type, x, y)``), last-action one-hots;
* available actions ([avail]): only no-op (0) for dead agents, never no-op while alive, stop always,
  moves that stay on the map, attacks on living enemies within range 6, medivac heals on living
  non-medivac allies; an unavailable action raises ``AssertionError("Agent i cannot perform
  action a")`` after ``last_action`` was overwritten, as in SMAC;
* ``reset``/``step`` ([step]): return types, ``info`` keys (``battle_won``, ``dead_allies``,
  ``dead_enemies`` on every normal step; ``episode_limit`` only with ``continuing_episode``),
  ``terminated=True`` at the time limit, battle-end rules (MMM medivac rules, draws, a battle
  end on the last step is not a time-out), counters, ``reward_battle`` and the win/defeat/sparse
  rewards scaled by ``max_reward / reward_scale_rate``; the quirk that every ``reset()`` before
  the first finished episode relaunches the game and adds the enemies' HP+shield to
  ``max_reward`` again (:attr:`n_launches` counts the launches);
* the game process dying ([crash]): ``step`` then relaunches the game itself and returns
  ``(0, True, {})``; a failed launch raises out of ``reset``/``step``. The exception classes are
  pysc2's when pysc2 is installed, else stand-ins with the same names and messages.

Simplified (a toy battle, not StarCraft):

* the map is an open, flat 32x32 square (all walkable, terrain height 0.5, playable = whole map);
* per step every unit moves at most speed x step time; attacks and heals land at once (damage =
  DPS x ``step_mul`` / 22.4 game loops per second); shields absorb damage first and regenerate
  2/s after 10 s without damage; no armour, bonus damage, splash, collisions or air/ground rules;
  a stopped agent does not auto-attack (so only chosen attacks deal damage);
* the enemy AI, whatever ``difficulty``, walks to the nearest living agent and attacks a random
  agent within its weapon reach; the enemy medivac heals a random damaged enemy;
* ``seed`` seeds one NumPy generator (spawn jitter, enemy targets): a seed and an action sequence
  give the same episodes; ``seed=None`` draws fresh entropy;
* ``save_replay`` writes nothing, ``render`` raises ``NotImplementedError`` and
  ``heuristic_ai=True`` is refused.

Fake-only hooks: ``crash_on_step=k`` kills the game process during the ``k``-th ``step()`` call of
the object; ``failed_launches=m`` makes the next ``m`` launches raise ``ConnectError``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "FakeStarCraft2Env", "FakeUnit", "UnitStats", "Point",
    "ProtocolError", "SC2ConnectionError", "ConnectError",  # pysc2's own classes where it is installed
]

try:  # pysc2's classes when installed, so that one ``except`` catches the real and the fake game
    from pysc2.lib.protocol import ConnectionError as SC2ConnectionError
    from pysc2.lib.protocol import ProtocolError
    from pysc2.lib.remote_controller import ConnectError
except ImportError:

    class ProtocolError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``pysc2.lib.protocol.ProtocolError``."""

    class SC2ConnectionError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``pysc2.lib.protocol.ConnectionError`` (not the builtin ConnectionError)."""

    class ConnectError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``pysc2.lib.remote_controller.ConnectError`` (a launch that failed)."""


logger = logging.getLogger(__name__)

GAME_ERRORS = (ProtocolError, SC2ConnectionError, ConnectError)  # what a dying game raises
CRASH_MESSAGE = "Connection already closed. SC2 probably crashed. Check the error log."
LAUNCH_FAILURE_MESSAGE = "Failed to connect to the SC2 websocket. Is it up?"
GAME_LOOPS_PER_SECOND = 22.4  # SC2 at "faster" speed
MAP_SIZE = 32  # all SMAC maps of the paper are 32x32 ([maps])
FLAT_HEIGHT = 0.5  # terrain height / 255 everywhere
SIGHT_RANGE = 9  # SMAC's unit_sight_range
SHOOT_RANGE = 6  # SMAC's unit_shoot_range
ALLY_MIN_UNIT_TYPE = 1970  # id of the first custom "_RL" ally type (arbitrary here)
SPAWN_GAP = 8.0  # distance between the two team centres: in sight, out of shooting range
SPAWN_JITTER = 0.25  # uniform jitter of each spawn coordinate
FORMATION_ROWS = 8  # units per column of a team's formation, 1 map unit apart
SHIELD_REGEN_DELAY_S, SHIELD_REGEN_PER_S = 10.0, 2.0
MEDIVAC_START_ENERGY, MEDIVAC_MAX_ENERGY, MEDIVAC_ENERGY_REGEN_PER_S = 50.0, 200.0, 0.7875
MEDIVAC_ENERGY_PER_HP = 1 / 3  # energy spent per HP healed
MOVES = {2: (0, 1), 3: (0, -1), 4: (1, 0), 5: (-1, 0)}  # north, south, east, west


class UnitStats(NamedTuple):
    """Standard SC2 stats of a unit kind (the maps' ``_RL`` allies share them here)."""

    sc2_id: int  # SC2 unit type id (enemies keep it; allies get ALLY_MIN_UNIT_TYPE + rank)
    health: float
    shield: float
    dps: float  # damage per second of game time
    reach: float  # weapon range + radii, used by the enemy AI (agents use SHOOT_RANGE)
    speed: float  # map units per second
    heal: float = 0.0  # HP healed per second


UNITS = {
    "marine": UnitStats(48, 45, 0, 9.8, 5.75, 3.15),
    "marauder": UnitStats(51, 125, 0, 9.3, 6.75, 3.15),
    "medivac": UnitStats(54, 150, 0, 0.0, 4.0, 3.5, heal=12.6),
    "stalker": UnitStats(74, 80, 80, 9.7, 6.75, 4.13),
    "zealot": UnitStats(73, 100, 50, 18.6, 1.0, 3.15),
    "colossus": UnitStats(4, 200, 150, 18.7, 7.75, 3.15),
    "zergling": UnitStats(105, 35, 0, 10.0, 1.0, 4.13),
}

# smac_maps.map_param_registry entries ([maps]):
# name: (n_agents, n_enemies, limit, a_race, b_race, unit_type_bits, map_type)
_REGISTRY = {
    "3m": (3, 3, 60, "T", "T", 0, "marines"),
    "8m": (8, 8, 120, "T", "T", 0, "marines"),
    "5m_vs_6m": (5, 6, 70, "T", "T", 0, "marines"),
    "2s3z": (5, 5, 120, "P", "P", 2, "stalkers_and_zealots"),
    "3s_vs_3z": (3, 3, 150, "P", "P", 0, "stalkers"),
    "MMM": (10, 10, 150, "T", "T", 3, "MMM"),
    "MMM2": (10, 12, 180, "T", "T", 3, "MMM"),
    "2c_vs_64zg": (2, 64, 400, "P", "Z", 0, "colossus"),
}
_FIELDS = ("n_agents", "n_enemies", "limit", "a_race", "b_race", "unit_type_bits", "map_type")
MAP_PARAMS: dict[str, dict[str, Any]] = {k: dict(zip(_FIELDS, v)) for k, v in _REGISTRY.items()}
_MMM_ALLIES = ("marauder",) * 2 + ("marine",) * 7 + ("medivac",)  # sorted by type id ([maps])
# Team compositions (allies, enemies in the order of the raw observation), from the SC2Maps ([maps])
TEAMS = {
    "3m": (("marine",) * 3, ("marine",) * 3),
    "8m": (("marine",) * 8, ("marine",) * 8),
    "5m_vs_6m": (("marine",) * 5, ("marine",) * 6),
    "2s3z": (("stalker",) * 2 + ("zealot",) * 3, ("stalker",) * 2 + ("zealot",) * 3),
    "3s_vs_3z": (("stalker",) * 3, ("zealot",) * 3),
    "MMM": (_MMM_ALLIES, ("marine",) * 7 + ("marauder",) * 2 + ("medivac",)),
    "MMM2": (_MMM_ALLIES, ("marine",) * 8 + ("marauder",) * 3 + ("medivac",)),
    "2c_vs_64zg": (("colossus",) * 2, ("zergling",) * 64),
}
# Ally type ranks as SMAC's _init_ally_unit_types assigns them (unit_type = min_unit_type + rank)
ALLY_TYPE_ORDER = {
    "marines": ("marine",),
    "stalkers_and_zealots": ("stalker", "zealot"),
    "MMM": ("marauder", "marine", "medivac"),
    "stalkers": ("stalker",),
    "colossus": ("colossus",),
}


class Point(NamedTuple):
    """A unit position (``unit.pos.x``, ``unit.pos.y`` as in pysc2's raw units)."""

    x: float
    y: float


@dataclass
class FakeUnit:
    """The fields of a pysc2 raw unit that SMAC reads, plus two fake-only ones."""

    tag: int
    unit_type: int
    owner: int  # 1 = agents, 2 = built-in AI
    pos: Point
    health: float
    health_max: float
    shield: float
    shield_max: float
    energy: float = 0.0
    weapon_cooldown: float = 0.0
    kind: str = ""  # fake-only: key into UNITS
    last_hit_loop: float = -math.inf  # fake-only: game loop of the last damage taken


class _FakeProcess:
    """The SC2 process and its controller: every request fails once the process is dead."""

    def __init__(self) -> None:
        self.alive = True

    def close(self) -> None:
        self.alive = False

    def request(self) -> None:
        if not self.alive:
            raise SC2ConnectionError(CRASH_MESSAGE)


class FakeStarCraft2Env:
    """Stand-in for ``smac.env.StarCraft2Env`` with the same arguments, methods and return types.

    ``map_name``, ``step_mul``, ..., ``debug`` are ``StarCraft2Env``'s arguments ([init]), in the same
    order and with the same defaults; two more simulate game failures.

    Args:
        crash_on_step: the game process dies during this (1-based) ``step()`` call of the object;
            the step then relaunches the game and returns ``(0, True, {})`` as SMAC does.
        failed_launches: the next this many launches raise ``ConnectError`` (out of ``reset()``,
            or out of ``step()`` when they follow a crash).

    Examples:
        >>> env = FakeStarCraft2Env(map_name="3s_vs_3z", seed=0)
        >>> {k: v for k, v in env.get_env_info().items() if k.endswith(("shape", "actions"))}
        {'state_shape': 54, 'obs_shape': 36, 'n_actions': 9}
        >>> obs, state = env.reset()
        >>> len(obs), obs[0].shape, obs[0].dtype, state.shape
        (3, (36,), dtype('float32'), (54,))
        >>> env.get_avail_agent_actions(0)[:2]  # no-op unavailable, stop available while alive
        [0, 1]
        >>> reward, terminated, info = env.step([1, 1, 1])
        >>> type(reward).__name__, terminated, sorted(info)
        ('float', False, ['battle_won', 'dead_allies', 'dead_enemies'])
    """

    def __init__(
        self,
        map_name: str = "8m",
        step_mul: int = 8,
        move_amount: float = 2,
        difficulty: str = "7",
        game_version: str | None = None,
        seed: int | None = None,
        continuing_episode: bool = False,
        obs_all_health: bool = True,
        obs_own_health: bool = True,
        obs_last_action: bool = False,
        obs_pathing_grid: bool = False,
        obs_terrain_height: bool = False,
        obs_instead_of_state: bool = False,
        obs_timestep_number: bool = False,
        state_last_action: bool = True,
        state_timestep_number: bool = False,
        reward_sparse: bool = False,
        reward_only_positive: bool = True,
        reward_death_value: float = 10,
        reward_win: float = 200,
        reward_defeat: float = 0,
        reward_negative_scale: float = 0.5,
        reward_scale: bool = True,
        reward_scale_rate: float = 20,
        replay_dir: str = "",
        replay_prefix: str = "",
        window_size_x: int = 1920,
        window_size_y: int = 1200,
        heuristic_ai: bool = False,
        heuristic_rest: bool = False,
        debug: bool = False,
        *,
        crash_on_step: int | None = None,
        failed_launches: int = 0,
    ) -> None:
        if map_name not in MAP_PARAMS:  # SMAC raises KeyError from its registry
            raise KeyError(f"{map_name!r} (the fake knows {sorted(MAP_PARAMS)})")
        if heuristic_ai:
            raise NotImplementedError("FakeStarCraft2Env does not implement heuristic_ai.")
        self.map_name = map_name
        params = MAP_PARAMS[map_name]
        self.n_agents, self.n_enemies = params["n_agents"], params["n_enemies"]
        self.episode_limit = params["limit"]
        self._move_amount, self._step_mul, self.difficulty = move_amount, step_mul, difficulty
        self.obs_own_health = obs_own_health or obs_all_health  # obs_all_health forces it
        self.obs_all_health, self.obs_instead_of_state = obs_all_health, obs_instead_of_state
        self.obs_last_action, self.obs_pathing_grid = obs_last_action, obs_pathing_grid
        self.obs_terrain_height, self.obs_timestep_number = obs_terrain_height, obs_timestep_number
        self.state_last_action, self.state_timestep_number = state_last_action, state_timestep_number
        self.n_obs_pathing, self.n_obs_height = 8, 9
        self.reward_sparse, self.reward_only_positive = reward_sparse, reward_only_positive
        self.reward_negative_scale, self.reward_death_value = reward_negative_scale, reward_death_value
        self.reward_win, self.reward_defeat = reward_win, reward_defeat
        self.reward_scale, self.reward_scale_rate = reward_scale, reward_scale_rate
        self.game_version, self.continuing_episode, self._seed = game_version, continuing_episode, seed
        self.heuristic_ai, self.heuristic_rest, self.debug = heuristic_ai, heuristic_rest, debug
        self.window_size = (window_size_x, window_size_y)
        self.replay_dir, self.replay_prefix = replay_dir, replay_prefix
        self.n_actions_no_attack, self.n_actions_move = 6, 4
        self.n_actions = self.n_actions_no_attack + self.n_enemies
        self._agent_race, self._bot_race = params["a_race"], params["b_race"]
        self.shield_bits_ally = 1 if self._agent_race == "P" else 0
        self.shield_bits_enemy = 1 if self._bot_race == "P" else 0
        self.unit_type_bits, self.map_type = params["unit_type_bits"], params["map_type"]
        self.max_reward = self.n_enemies * self.reward_death_value + self.reward_win
        self.renderer = None
        self.agents: dict[int, FakeUnit] = {}
        self.enemies: dict[int, FakeUnit] = {}
        self._unit_types: list[int] | None = None
        self._episode_count = self._episode_steps = self._total_steps = 0
        self.battles_won = self.battles_game = self.timeouts = self.force_restarts = 0
        self.last_stats = None
        self.death_tracker_ally = np.zeros(self.n_agents)
        self.death_tracker_enemy = np.zeros(self.n_enemies)
        self.previous_ally_units: dict[int, FakeUnit] | None = None
        self.previous_enemy_units: dict[int, FakeUnit] | None = None
        self.win_counted = self.defeat_counted = False
        self.last_action = np.zeros((self.n_agents, self.n_actions))
        self._min_unit_type = 0
        self.marine_id = self.marauder_id = self.medivac_id = 0
        self.hydralisk_id = self.zergling_id = self.baneling_id = 0
        self.stalker_id = self.colossus_id = self.zealot_id = 0
        self.max_distance_x = self.max_distance_y = self.map_x = self.map_y = 0
        self.terrain_height: np.ndarray | None = None
        self.pathing_grid: np.ndarray | None = None
        self._run_config: Any = None
        self._sc2_proc: _FakeProcess | None = None
        self._controller: _FakeProcess | None = None
        # fake-only state
        self.crash_on_step, self.failed_launches = crash_on_step, int(failed_launches)
        self.n_launches = 0  # game launches so far (SMAC starts a process on each)
        self._step_calls = 0
        self._game_loop = 0.0
        self._next_tag = 1
        self._rng = np.random.default_rng(seed)

    # ----------------------------------------------------------------- game process
    def _launch(self) -> None:
        """Launches the game: raises ``ConnectError`` while ``failed_launches`` remain."""
        self.n_launches += 1
        if self.failed_launches > 0:
            self.failed_launches -= 1
            raise ConnectError(LAUNCH_FAILURE_MESSAGE)
        self._run_config = "fake"
        self._sc2_proc = _FakeProcess()  # SMAC does not close a running one here ([step])
        self._controller = self._sc2_proc
        self.map_x = self.map_y = MAP_SIZE
        self.max_distance_x = self.max_distance_y = MAP_SIZE
        self.pathing_grid = np.ones((MAP_SIZE, MAP_SIZE), dtype=bool)
        self.terrain_height = np.full((MAP_SIZE, MAP_SIZE), FLAT_HEIGHT)

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Starts an episode; returns ``(get_obs(), get_state())``."""
        self._episode_steps = 0
        if self._episode_count == 0:
            self._launch()
        else:
            self._restart()
        self.death_tracker_ally = np.zeros(self.n_agents)
        self.death_tracker_enemy = np.zeros(self.n_enemies)
        self.previous_ally_units = self.previous_enemy_units = None
        self.win_counted = self.defeat_counted = False
        self.last_action = np.zeros((self.n_agents, self.n_actions))
        try:
            self._controller.request()
            self.init_units()
        except (ProtocolError, SC2ConnectionError):
            self.full_restart()
        return self.get_obs(), self.get_state()

    def _restart(self) -> None:
        """Kills all units; the map script then respawns both teams."""
        try:
            self._controller.request()
        except (ProtocolError, SC2ConnectionError):
            self.full_restart()

    def full_restart(self) -> None:
        """Closes the game process and launches a new one."""
        self._sc2_proc.close()
        self._launch()
        self.force_restarts += 1

    def close(self) -> None:
        """Closes the game process (a no-op before the first launch)."""
        if self._sc2_proc:
            self._sc2_proc.close()

    def seed(self) -> int | None:
        """Returns the constructor's seed (SMAC has no setter)."""
        return self._seed

    def render(self, mode: str = "human") -> None:
        raise NotImplementedError("FakeStarCraft2Env has no renderer.")

    def save_replay(self) -> None:
        """Logs where SMAC would save the replay; the fake writes none."""
        if self._run_config is None:  # as SMAC before the first launch
            raise AttributeError("'NoneType' object has no attribute 'save_replay'")
        prefix = self.replay_prefix or self.map_name
        logger.info("Replay saved at: %s (fake game: nothing written)", f"{self.replay_dir}{prefix}")

    # ----------------------------------------------------------------- units
    def init_units(self) -> None:
        """Spawns both teams; allies are sorted by ``(unit_type, x, y)`` as in SMAC."""
        allies, enemies = self._spawn(1), self._spawn(2)
        allies.sort(key=lambda u: (u.unit_type, u.pos.x, u.pos.y))
        self.agents = dict(enumerate(allies))
        self.enemies = {}
        for unit in enemies:
            self.enemies[len(self.enemies)] = unit
            if self._episode_count == 0:  # SMAC's quirk: again at every reset until an episode ends
                self.max_reward += unit.health_max + unit.shield_max
        if self._episode_count == 0:
            self._init_ally_unit_types(min(u.unit_type for u in self.agents.values()))
        self._unit_types = [u.unit_type for u in allies] + [u.unit_type for u in enemies]

    def _spawn(self, owner: int) -> list[FakeUnit]:
        """One team in columns of FORMATION_ROWS, allies west and enemies east of the centre."""
        kinds = TEAMS[self.map_name][owner - 1]
        side, rows = (-1 if owner == 1 else 1), min(len(kinds), FORMATION_ROWS)
        units = []
        for i, kind in enumerate(kinds):
            col, row = divmod(i, FORMATION_ROWS)
            jx, jy = self._rng.uniform(-SPAWN_JITTER, SPAWN_JITTER, size=2)
            x = self.map_x / 2 + side * (SPAWN_GAP / 2 + col) + jx
            y = self.map_y / 2 + row - (rows - 1) / 2 + jy
            stats = UNITS[kind]
            rank = ALLY_TYPE_ORDER[self.map_type].index(kind) if owner == 1 else 0
            unit_type = ALLY_MIN_UNIT_TYPE + rank if owner == 1 else stats.sc2_id
            energy = MEDIVAC_START_ENERGY if stats.heal else 0.0
            hp, shield = stats.health, stats.shield
            unit = FakeUnit(self._next_tag, unit_type, owner, Point(x, y), hp, hp, shield, shield)
            unit.energy, unit.kind = energy, kind
            units.append(unit)
            self._next_tag += 1
        return units

    def _init_ally_unit_types(self, min_unit_type: int) -> None:
        self._min_unit_type = min_unit_type
        for rank, kind in enumerate(ALLY_TYPE_ORDER[self.map_type]):
            setattr(self, f"{kind}_id", min_unit_type + rank)

    def get_unit_by_id(self, a_id: int) -> FakeUnit:
        return self.agents[a_id]

    def get_unit_types(self) -> list[int] | None:
        return self._unit_types

    def unit_shoot_range(self, agent_id: int) -> int:
        return SHOOT_RANGE

    def unit_sight_range(self, agent_id: int) -> int:
        return SIGHT_RANGE

    def unit_max_cooldown(self, unit: FakeUnit) -> float:
        switcher = {self.marine_id: 15, self.marauder_id: 25, self.medivac_id: 200,
                    self.stalker_id: 35, self.zealot_id: 22, self.colossus_id: 24,
                    self.hydralisk_id: 10, self.zergling_id: 11, self.baneling_id: 1}  # fmt: skip
        return switcher.get(unit.unit_type, 15)

    def unit_max_shield(self, unit: FakeUnit) -> float | None:
        if unit.unit_type in (74, self.stalker_id):
            return 80
        if unit.unit_type in (73, self.zealot_id):
            return 50
        if unit.unit_type in (4, self.colossus_id):
            return 150
        return None

    def get_unit_type_id(self, unit: FakeUnit, ally: bool) -> int:
        if ally:
            return unit.unit_type - self._min_unit_type
        if self.map_type == "stalkers_and_zealots":
            return unit.unit_type - 73  # zealot (73) -> 0, stalker (74) -> 1
        if self.map_type == "MMM":
            return {51: 0, 48: 1}.get(unit.unit_type, 2)  # marauder, marine, medivac
        raise ValueError(f"no enemy type ids on map type {self.map_type!r}")

    @staticmethod
    def distance(x1: float, y1: float, x2: float, y2: float) -> float:
        return math.hypot(x2 - x1, y2 - y1)

    def _dist(self, a: FakeUnit, b: FakeUnit) -> float:
        return self.distance(a.pos.x, a.pos.y, b.pos.x, b.pos.y)

    def check_bounds(self, x: float, y: float) -> bool:
        return 0 <= x < self.map_x and 0 <= y < self.map_y

    def can_move(self, unit: FakeUnit, action: int) -> bool:
        """Whether move ``action`` (2-5) lands on a walkable cell inside the map."""
        m = self._move_amount / 2
        dx, dy = MOVES[action]
        x, y = int(unit.pos.x + dx * m), int(unit.pos.y + dy * m)
        return self.check_bounds(x, y) and bool(self.pathing_grid[x, y])

    def _surrounding(self, unit: FakeUnit, grid: np.ndarray, include_self: bool) -> list[float]:
        x, y, ma = int(unit.pos.x), int(unit.pos.y), int(self._move_amount)
        points = [(x, y + 2 * ma), (x, y - 2 * ma), (x + 2 * ma, y), (x - 2 * ma, y),
                  (x + ma, y + ma), (x - ma, y - ma), (x + ma, y - ma), (x - ma, y + ma)]  # fmt: skip
        points += [(x, y)] if include_self else []
        return [float(grid[px, py]) if self.check_bounds(px, py) else 1.0 for px, py in points]

    # ----------------------------------------------------------------- actions
    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        """Available actions of one agent as a list of 0/1 of length ``n_actions`` ([avail])."""
        unit = self.get_unit_by_id(agent_id)
        if unit.health <= 0:
            return [1] + [0] * (self.n_actions - 1)  # dead: only no-op
        avail = [0] * self.n_actions
        avail[1] = 1  # stop
        for action in MOVES:
            avail[action] = int(self.can_move(unit, action))
        targets = self.enemies.items()
        if self.map_type == "MMM" and unit.unit_type == self.medivac_id:  # heals allies instead
            targets = [(i, u) for i, u in self.agents.items() if u.unit_type != self.medivac_id]
        for t_id, target in targets:
            if target.health > 0 and self._dist(unit, target) <= self.unit_shoot_range(agent_id):
                avail[t_id + self.n_actions_no_attack] = 1
        return avail

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_total_actions(self) -> int:
        return self.n_actions

    def get_agent_action(self, a_id: int, action: int) -> tuple[str, Any] | None:
        """Checks ``action`` as SMAC does and returns the order (None for no-op)."""
        avail_actions = self.get_avail_agent_actions(a_id)
        assert avail_actions[action] == 1, "Agent {} cannot perform action {}".format(a_id, action)
        unit = self.get_unit_by_id(a_id)
        if action == 0:
            assert unit.health == 0, "No-op only available for dead agents."
            return None
        if action == 1:
            return ("stop", None)
        if action in MOVES:
            return ("move", MOVES[action])
        target_id = action - self.n_actions_no_attack
        if self.map_type == "MMM" and unit.unit_type == self.medivac_id:
            return ("heal", target_id)
        return ("attack", target_id)

    # ----------------------------------------------------------------- step
    def step(self, actions: Any) -> tuple[float, bool, dict[str, Any]]:
        """Applies one action per agent; returns ``(reward, terminated, info)`` ([step])."""
        actions_int = [int(a) for a in actions]
        self.last_action = np.eye(self.n_actions)[np.array(actions_int)]
        orders = [self.get_agent_action(a_id, a) for a_id, a in enumerate(actions_int)]
        self._step_calls += 1
        if self.crash_on_step is not None and self._step_calls == self.crash_on_step:
            self._sc2_proc.close()  # the game process dies during this step
        try:
            self._controller.request()
            self.previous_ally_units = {i: copy.copy(u) for i, u in self.agents.items()}
            self.previous_enemy_units = {i: copy.copy(u) for i, u in self.enemies.items()}
            self._simulate(orders)
        except (ProtocolError, SC2ConnectionError):
            self.full_restart()
            return 0, True, {}
        self._total_steps += 1
        self._episode_steps += 1
        game_end_code = self.update_units()
        terminated = False
        reward = self.reward_battle()
        info: dict[str, Any] = {"battle_won": False}
        info["dead_allies"] = sum(u.health == 0 for u in self.agents.values())
        info["dead_enemies"] = sum(u.health == 0 for u in self.enemies.values())
        if game_end_code is not None:  # the battle is over (checked before the time limit)
            terminated = True
            self.battles_game += 1
            if game_end_code == 1 and not self.win_counted:
                self.battles_won += 1
                self.win_counted = True
                info["battle_won"] = True
                reward = 1 if self.reward_sparse else reward + self.reward_win
            elif game_end_code == -1 and not self.defeat_counted:
                self.defeat_counted = True
                reward = -1 if self.reward_sparse else reward + self.reward_defeat
        elif self._episode_steps >= self.episode_limit:
            terminated = True
            if self.continuing_episode:
                info["episode_limit"] = True
            self.battles_game += 1
            self.timeouts += 1
        if terminated:
            self._episode_count += 1
        if self.reward_scale:
            reward /= self.max_reward / self.reward_scale_rate
        return reward, terminated, info

    def _simulate(self, orders: list[tuple[str, Any] | None]) -> None:
        """Advances the toy battle by ``step_mul`` game loops (simultaneous moves and hits)."""
        dt = self._step_mul / GAME_LOOPS_PER_SECOND  # game seconds per agent step
        hits: list[tuple[FakeUnit, float]] = []
        heals: list[tuple[FakeUnit, FakeUnit]] = []
        moves: list[tuple[FakeUnit, Point]] = []
        for unit in [*self.agents.values(), *self.enemies.values()]:
            unit.weapon_cooldown = max(0.0, unit.weapon_cooldown - self._step_mul)
        for a_id, order in enumerate(orders):
            unit = self.agents[a_id]
            if order is None or order[0] == "stop":
                continue
            kind, arg = order
            stats = UNITS[unit.kind]
            if kind == "move":
                step = min(self._move_amount, stats.speed * dt)
                moves.append((unit, self._clamp(unit.pos.x + arg[0] * step, unit.pos.y + arg[1] * step)))
            elif kind == "attack":
                hits.append((self.enemies[arg], stats.dps * dt))
                unit.weapon_cooldown = max(0.0, self.unit_max_cooldown(unit) - self._step_mul / 2)
            else:
                heals.append((unit, self.agents[arg]))
        for enemy in self.enemies.values():
            if enemy.health > 0:
                self._enemy_ai(enemy, dt, hits, heals, moves)
        for unit, pos in moves:
            unit.pos = pos
        for healer, target in heals:
            self._heal(healer, target, dt)
        for target, amount in hits:
            self._damage(target, amount)
        self._game_loop += self._step_mul
        regen_after = SHIELD_REGEN_DELAY_S * GAME_LOOPS_PER_SECOND  # game loops without damage
        for unit in [*self.agents.values(), *self.enemies.values()]:
            if unit.health <= 0:
                continue
            if unit.shield_max and self._game_loop - unit.last_hit_loop >= regen_after:
                unit.shield = min(unit.shield_max, unit.shield + SHIELD_REGEN_PER_S * dt)
            if UNITS[unit.kind].heal:
                unit.energy = min(MEDIVAC_MAX_ENERGY, unit.energy + MEDIVAC_ENERGY_REGEN_PER_S * dt)

    def _enemy_ai(self, unit: FakeUnit, dt: float, hits: list, heals: list, moves: list) -> None:
        """The built-in AI: attack a random agent in reach, else walk to the nearest one."""
        stats = UNITS[unit.kind]
        if stats.heal:  # medivac: heal a random damaged friend in reach, else follow the army
            friends = [u for u in self.enemies.values() if u.health > 0 and not UNITS[u.kind].heal]
            damaged = [
                u for u in friends if u.health < u.health_max and self._dist(unit, u) <= stats.reach
            ]
            if damaged:
                heals.append((unit, damaged[self._rng.integers(len(damaged))]))
            elif friends:
                goal = min(friends, key=lambda u: self._dist(unit, u))
                moves.append((unit, self._toward(unit, goal.pos, stats.speed * dt)))
            return
        allies = [u for u in self.agents.values() if u.health > 0]
        if not allies:
            return
        in_reach = [u for u in allies if self._dist(unit, u) <= stats.reach]
        if in_reach:
            hits.append((in_reach[self._rng.integers(len(in_reach))], stats.dps * dt))
            return
        nearest = min(allies, key=lambda u: self._dist(unit, u))
        moves.append((unit, self._toward(unit, nearest.pos, stats.speed * dt)))

    def _toward(self, unit: FakeUnit, goal: Point, step: float) -> Point:
        dx, dy = goal.x - unit.pos.x, goal.y - unit.pos.y
        dist = math.hypot(dx, dy)
        step = min(step, dist - 0.5)  # stop half a unit short (no stacking)
        if step <= 0:
            return unit.pos
        return self._clamp(unit.pos.x + dx / dist * step, unit.pos.y + dy / dist * step)

    def _clamp(self, x: float, y: float) -> Point:
        return Point(min(max(x, 0.0), self.map_x - 1e-3), min(max(y, 0.0), self.map_y - 1e-3))

    def _heal(self, healer: FakeUnit, target: FakeUnit, dt: float) -> None:
        if healer.health <= 0 or target.health <= 0:
            return
        amount = min(UNITS[healer.kind].heal * dt, target.health_max - target.health,
                     healer.energy / MEDIVAC_ENERGY_PER_HP)  # fmt: skip
        target.health += amount
        healer.energy -= amount * MEDIVAC_ENERGY_PER_HP

    def _damage(self, unit: FakeUnit, amount: float) -> None:
        if unit.health <= 0:
            return
        unit.last_hit_loop = self._game_loop
        absorbed = min(unit.shield, amount)  # shields first
        unit.shield -= absorbed
        unit.health = max(0.0, unit.health - (amount - absorbed))

    def update_units(self) -> int | None:
        """Battle result after a step: 1 won, -1 lost, 0 draw, None ongoing (SMAC's rules)."""
        n_ally_alive = sum(u.health > 0 for u in self.agents.values())
        n_enemy_alive = sum(u.health > 0 for u in self.enemies.values())
        if n_ally_alive == 0 and n_enemy_alive > 0 or self.only_medivac_left(ally=True):
            return -1
        if n_ally_alive > 0 and n_enemy_alive == 0 or self.only_medivac_left(ally=False):
            return 1
        if n_ally_alive == 0 and n_enemy_alive == 0:
            return 0
        return None

    def only_medivac_left(self, ally: bool) -> bool:
        if self.map_type != "MMM":
            return False
        units = self.agents if ally else self.enemies
        alive = [u for u in units.values() if u.health > 0 and u.unit_type != self.medivac_id]
        if ally:
            return len(alive) == 0
        return len(alive) == 1 and alive[0].unit_type == 54

    def reward_battle(self) -> float:
        """SMAC's dense reward: damage and kills dealt (minus scaled losses unless only positive)."""
        if self.reward_sparse:
            return 0
        delta_deaths = delta_ally = delta_enemy = 0.0
        neg_scale = self.reward_negative_scale
        for al_id, al_unit in self.agents.items():
            if not self.death_tracker_ally[al_id]:
                prev = self.previous_ally_units[al_id]
                prev_health = prev.health + prev.shield
                if al_unit.health == 0:
                    self.death_tracker_ally[al_id] = 1
                    if not self.reward_only_positive:
                        delta_deaths -= self.reward_death_value * neg_scale
                    delta_ally += prev_health * neg_scale
                else:
                    delta_ally += neg_scale * (prev_health - al_unit.health - al_unit.shield)
        for e_id, e_unit in self.enemies.items():
            if not self.death_tracker_enemy[e_id]:
                prev = self.previous_enemy_units[e_id]
                prev_health = prev.health + prev.shield
                if e_unit.health == 0:
                    self.death_tracker_enemy[e_id] = 1
                    delta_deaths += self.reward_death_value
                    delta_enemy += prev_health
                else:
                    delta_enemy += prev_health - e_unit.health - e_unit.shield
        if self.reward_only_positive:
            return abs(delta_enemy + delta_deaths)  # regeneration also counts as positive
        return delta_enemy + delta_deaths - delta_ally

    # ----------------------------------------------------------------- observations
    def get_obs_move_feats_size(self) -> int:
        pathing = self.obs_pathing_grid * self.n_obs_pathing
        return self.n_actions_move + pathing + self.obs_terrain_height * self.n_obs_height

    def get_obs_enemy_feats_size(self) -> tuple[int, int]:
        nf_en = 4 + self.unit_type_bits + self.obs_all_health * (1 + self.shield_bits_enemy)
        return self.n_enemies, nf_en

    def get_obs_ally_feats_size(self) -> tuple[int, int]:
        nf_al = 4 + self.unit_type_bits + self.obs_all_health * (1 + self.shield_bits_ally)
        return self.n_agents - 1, nf_al + self.obs_last_action * self.n_actions

    def get_obs_own_feats_size(self) -> int:
        own = self.unit_type_bits + self.obs_own_health * (1 + self.shield_bits_ally)
        return own + int(self.obs_timestep_number)  # reserved slot, unused ([sizes] quirk)

    def get_obs_size(self) -> int:
        n_en, nf_en = self.get_obs_enemy_feats_size()
        n_al, nf_al = self.get_obs_ally_feats_size()
        own = self.get_obs_own_feats_size()
        return self.get_obs_move_feats_size() + n_en * nf_en + n_al * nf_al + own

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        """One agent's observation: move, enemy, ally and own blocks; zeros if dead ([layout])."""
        unit = self.get_unit_by_id(agent_id)
        move_feats = np.zeros(self.get_obs_move_feats_size(), dtype=np.float32)
        enemy_feats = np.zeros(self.get_obs_enemy_feats_size(), dtype=np.float32)
        ally_feats = np.zeros(self.get_obs_ally_feats_size(), dtype=np.float32)
        own_feats = np.zeros(self.get_obs_own_feats_size(), dtype=np.float32)
        if unit.health > 0:
            x, y = unit.pos
            sight_range = self.unit_sight_range(agent_id)
            avail_actions = self.get_avail_agent_actions(agent_id)
            move_feats[: self.n_actions_move] = avail_actions[2:6]
            ind = self.n_actions_move
            if self.obs_pathing_grid:
                pathing = self._surrounding(unit, self.pathing_grid, False)
                move_feats[ind : ind + self.n_obs_pathing] = pathing
                ind += self.n_obs_pathing
            if self.obs_terrain_height:
                move_feats[ind:] = self._surrounding(unit, self.terrain_height, True)
            for e_id, e_unit in self.enemies.items():
                dist = self._dist(unit, e_unit)
                if dist < sight_range and e_unit.health > 0:  # visible and alive
                    dx, dy = e_unit.pos.x - x, e_unit.pos.y - y
                    row = [avail_actions[self.n_actions_no_attack + e_id], dist / sight_range,
                           dx / sight_range, dy / sight_range]  # fmt: skip
                    if self.obs_all_health:
                        row += self._health_feats(e_unit, self.shield_bits_enemy)
                    enemy_feats[e_id, : len(row)] = row
                    if self.unit_type_bits > 0:
                        enemy_feats[e_id, len(row) + self.get_unit_type_id(e_unit, False)] = 1
            al_ids = [al_id for al_id in range(self.n_agents) if al_id != agent_id]
            for i, al_id in enumerate(al_ids):
                al_unit = self.get_unit_by_id(al_id)
                dist = self._dist(unit, al_unit)
                if dist < sight_range and al_unit.health > 0:  # visible and alive
                    row = [1, dist / sight_range, (al_unit.pos.x - x) / sight_range,
                           (al_unit.pos.y - y) / sight_range]  # fmt: skip
                    if self.obs_all_health:
                        row += self._health_feats(al_unit, self.shield_bits_ally)
                    ally_feats[i, : len(row)] = row
                    ind = len(row)
                    if self.unit_type_bits > 0:
                        ally_feats[i, ind + self.get_unit_type_id(al_unit, True)] = 1
                        ind += self.unit_type_bits
                    if self.obs_last_action:
                        ally_feats[i, ind:] = self.last_action[al_id]
            row = self._health_feats(unit, self.shield_bits_ally) if self.obs_own_health else []
            own_feats[: len(row)] = row
            if self.unit_type_bits > 0:
                own_feats[len(row) + self.get_unit_type_id(unit, True)] = 1
        blocks = (move_feats, enemy_feats, ally_feats, own_feats)
        agent_obs = np.concatenate([block.flatten() for block in blocks])
        if self.obs_timestep_number:  # appended to the reserved slot: one longer, float64 ([sizes])
            agent_obs = np.append(agent_obs, self._episode_steps / self.episode_limit)
        return agent_obs

    def _health_feats(self, unit: FakeUnit, shield_bits: int) -> list[float]:
        feats = [unit.health / unit.health_max]
        if shield_bits > 0:
            feats.append(unit.shield / self.unit_max_shield(unit))
        return feats

    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(self.n_agents)]

    def _ally_enemy_state(self) -> tuple[np.ndarray, np.ndarray]:
        """State rows of allies and enemies (zeros for dead units), float64 as in SMAC."""
        nf_al = 4 + self.shield_bits_ally + self.unit_type_bits
        nf_en = 3 + self.shield_bits_enemy + self.unit_type_bits
        ally_state, enemy_state = np.zeros((self.n_agents, nf_al)), np.zeros((self.n_enemies, nf_en))
        center_x, center_y = self.map_x / 2, self.map_y / 2
        for al_id, al_unit in self.agents.items():
            if al_unit.health > 0:
                max_cd = self.unit_max_cooldown(al_unit)
                medivac = self.map_type == "MMM" and al_unit.unit_type == self.medivac_id
                row = [al_unit.health / al_unit.health_max,
                       (al_unit.energy if medivac else al_unit.weapon_cooldown) / max_cd,
                       (al_unit.pos.x - center_x) / self.max_distance_x,
                       (al_unit.pos.y - center_y) / self.max_distance_y]  # fmt: skip
                row += [al_unit.shield / self.unit_max_shield(al_unit)] if self.shield_bits_ally else []
                ally_state[al_id, : len(row)] = row
                if self.unit_type_bits > 0:
                    ally_state[al_id, len(row) + self.get_unit_type_id(al_unit, True)] = 1
        for e_id, e_unit in self.enemies.items():
            if e_unit.health > 0:
                row = [e_unit.health / e_unit.health_max,
                       (e_unit.pos.x - center_x) / self.max_distance_x,
                       (e_unit.pos.y - center_y) / self.max_distance_y]  # fmt: skip
                row += [e_unit.shield / self.unit_max_shield(e_unit)] if self.shield_bits_enemy else []
                enemy_state[e_id, : len(row)] = row
                if self.unit_type_bits > 0:
                    enemy_state[e_id, len(row) + self.get_unit_type_id(e_unit, False)] = 1
        return ally_state, enemy_state

    def get_state(self) -> np.ndarray:
        """Global state: ally rows, enemy rows, last actions, timestep ([layout]); float32."""
        if self.obs_instead_of_state:
            return np.concatenate(self.get_obs(), axis=0).astype(np.float32)
        ally_state, enemy_state = self._ally_enemy_state()
        state = np.append(ally_state.flatten(), enemy_state.flatten())
        if self.state_last_action:
            state = np.append(state, self.last_action.flatten())
        if self.state_timestep_number:
            state = np.append(state, self._episode_steps / self.episode_limit)
        return state.astype(dtype=np.float32)

    def get_state_dict(self) -> dict[str, Any]:
        """The state's parts: ``allies``, ``enemies``, optional ``last_action``, ``timestep``."""
        ally_state, enemy_state = self._ally_enemy_state()
        state: dict[str, Any] = {"allies": ally_state, "enemies": enemy_state}
        if self.state_last_action:
            state["last_action"] = self.last_action
        if self.state_timestep_number:
            state["timestep"] = self._episode_steps / self.episode_limit
        return state

    def get_state_size(self) -> int:
        if self.obs_instead_of_state:
            return self.get_obs_size() * self.n_agents
        nf_al = 4 + self.shield_bits_ally + self.unit_type_bits
        nf_en = 3 + self.shield_bits_enemy + self.unit_type_bits
        size = self.n_enemies * nf_en + self.n_agents * nf_al
        size += self.state_last_action * self.n_agents * self.n_actions
        return size + int(self.state_timestep_number)

    def get_visibility_matrix(self) -> np.ndarray:
        """bool [n_agents, n_agents + n_enemies]: who sees whom (living units within sight)."""
        arr = np.zeros((self.n_agents, self.n_agents + self.n_enemies), dtype=bool)
        for agent_id, agent in self.agents.items():
            if agent.health > 0:
                sight = self.unit_sight_range(agent_id)
                for e_id, e_unit in self.enemies.items():
                    if self._dist(agent, e_unit) < sight and e_unit.health > 0:
                        arr[agent_id, self.n_agents + e_id] = True
                for al_id in range(agent_id + 1, self.n_agents):
                    al_unit = self.agents[al_id]
                    if self._dist(agent, al_unit) < sight and al_unit.health > 0:
                        arr[agent_id, al_id] = arr[al_id, agent_id] = True
        return arr

    # ----------------------------------------------------------------- info
    def get_env_info(self) -> dict[str, Any]:
        """Sizes and feature names: exactly SMAC's seven keys ([info])."""
        ally_names = ["health", "energy/cooldown", "rel_x", "rel_y"]
        enemy_names = ["health", "rel_x", "rel_y"]
        ally_names += ["shield"] if self.shield_bits_ally else []
        enemy_names += ["shield"] if self.shield_bits_enemy else []
        type_names = [f"type_{bit}" for bit in range(self.unit_type_bits)]
        return {
            "state_shape": self.get_state_size(),
            "obs_shape": self.get_obs_size(),
            "n_actions": self.get_total_actions(),
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
            "agent_features": ally_names + type_names,
            "enemy_features": enemy_names + type_names,
        }

    def get_stats(self) -> dict[str, float]:
        """Battle counters; ``ZeroDivisionError`` before the first finished battle, as SMAC."""
        return {
            "battles_won": self.battles_won,
            "battles_game": self.battles_game,
            "battles_draw": self.timeouts,
            "win_rate": self.battles_won / self.battles_game,
            "timeouts": self.timeouts,
            "restarts": self.force_restarts,
        }
