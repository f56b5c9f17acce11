"""FakeStarCraft2Env: SMAC's ``StarCraft2Env`` contract ([init], [step], [avail], [info], [crash])
on the toy battle of :mod:`~fop_modules.envs.smac_fake.battle`, with the observation and state
layouts of :mod:`~fop_modules.envs.smac_fake.features`."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np

from fop_modules.envs.smac_fake import units as unit_tables
from fop_modules.envs.smac_fake.battle import ToyBattle
from fop_modules.envs.smac_fake.features import SMACFeatures
from fop_modules.envs.smac_fake.process import (
    LAUNCH_FAILURE_MESSAGE, ConnectError, FakeProcess, ProtocolError, SC2ConnectionError,
)
from fop_modules.envs.smac_fake.units import (
    ALLY_MIN_UNIT_TYPE, ALLY_TYPE_ORDER, FLAT_HEIGHT, FORMATION_ROWS, MAP_PARAMS, MAP_SIZE,
    MEDIVAC_START_ENERGY, MOVES, SHOOT_RANGE, SIGHT_RANGE, SPAWN_GAP, SPAWN_JITTER, TEAMS, FakeUnit, Point,
)

__all__ = ["FakeStarCraft2Env"]

logger = logging.getLogger(__name__)


class FakeStarCraft2Env(ToyBattle, SMACFeatures):
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
        self._sc2_proc: FakeProcess | None = None
        self._controller: FakeProcess | None = None
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
        self._sc2_proc = FakeProcess()  # SMAC does not close a running one here ([step])
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
            stats = unit_tables.UNITS[kind]
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
