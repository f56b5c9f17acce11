"""The maps, teams and unit stats the fake game knows: SMAC's map registry entries ([maps]:
``smac/env/starcraft2/maps/smac_maps.py``), the SC2Maps' team compositions and standard SC2 unit
stats, and the raw unit fields SMAC reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "UnitStats", "Point", "FakeUnit", "UNITS", "MAP_PARAMS", "TEAMS", "ALLY_TYPE_ORDER", "MOVES",
    "GAME_LOOPS_PER_SECOND", "MAP_SIZE", "FLAT_HEIGHT", "SIGHT_RANGE", "SHOOT_RANGE", "ALLY_MIN_UNIT_TYPE",
    "SPAWN_GAP", "SPAWN_JITTER", "FORMATION_ROWS", "SHIELD_REGEN_DELAY_S", "SHIELD_REGEN_PER_S",
    "MEDIVAC_START_ENERGY", "MEDIVAC_MAX_ENERGY", "MEDIVAC_ENERGY_REGEN_PER_S", "MEDIVAC_ENERGY_PER_HP",
]

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
