"""SMAC's observation and state layouts for the fake game ([sizes], [layout]: blocks and their
order, sight range, normalisers, type one-hots, last-action one-hots, the ``obs_timestep_number``
quirk)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fop_modules.envs.smac_fake.units import FakeUnit

__all__ = ["SMACFeatures"]


class SMACFeatures:
    """Observations, state and their sizes, as SMAC's ``StarCraft2Env`` builds them, for
    :class:`~fop_modules.envs.smac_fake.FakeStarCraft2Env` (a mixin: it reads the env's units,
    flags and available actions)."""

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
