"""The toy battle a step of the fake game advances: orders, the enemy AI, moves, heals, damage
and shield and energy regeneration (a small simulation in place of StarCraft II; the package's
docstring lists what it simplifies)."""

from __future__ import annotations

import math
from typing import Any

from fop_modules.envs.smac_fake import units as unit_tables
from fop_modules.envs.smac_fake.units import (
    GAME_LOOPS_PER_SECOND, MEDIVAC_ENERGY_PER_HP, MEDIVAC_ENERGY_REGEN_PER_S, MEDIVAC_MAX_ENERGY,
    SHIELD_REGEN_DELAY_S, SHIELD_REGEN_PER_S, FakeUnit, Point,
)

__all__ = ["ToyBattle"]


class ToyBattle:
    """The battle simulation of :class:`~fop_modules.envs.smac_fake.FakeStarCraft2Env` (a mixin:
    it reads the env's units, map size, step settings and random generator)."""

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
            stats = unit_tables.UNITS[unit.kind]
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
            if unit_tables.UNITS[unit.kind].heal:
                unit.energy = min(MEDIVAC_MAX_ENERGY, unit.energy + MEDIVAC_ENERGY_REGEN_PER_S * dt)

    def _enemy_ai(self, unit: FakeUnit, dt: float, hits: list, heals: list, moves: list) -> None:
        """The built-in AI: attack a random agent in reach, else walk to the nearest one."""
        stats = unit_tables.UNITS[unit.kind]
        if stats.heal:  # medivac: heal a random damaged friend in reach, else follow the army
            friends = [u for u in self.enemies.values() if u.health > 0 and not unit_tables.UNITS[u.kind].heal]
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
        amount = min(unit_tables.UNITS[healer.kind].heal * dt, target.health_max - target.health,
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
