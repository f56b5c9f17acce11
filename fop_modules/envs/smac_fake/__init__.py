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

The package's modules, one job each: :mod:`~fop_modules.envs.smac_fake.env` (the
``StarCraft2Env`` contract: arguments, game process, units, actions, step, rewards, info),
:mod:`~fop_modules.envs.smac_fake.features` (observation and state layouts),
:mod:`~fop_modules.envs.smac_fake.battle` (the toy battle a step advances),
:mod:`~fop_modules.envs.smac_fake.units` (maps, teams and unit stats) and
:mod:`~fop_modules.envs.smac_fake.process` (the game process and the errors it raises).
"""

from fop_modules.envs.smac_fake.env import FakeStarCraft2Env
from fop_modules.envs.smac_fake.process import GAME_ERRORS, ConnectError, ProtocolError, SC2ConnectionError
from fop_modules.envs.smac_fake.units import MAP_PARAMS, UNITS, FakeUnit, Point, UnitStats

__all__ = [
    "FakeStarCraft2Env", "FakeUnit", "UnitStats", "Point", "MAP_PARAMS", "UNITS", "GAME_ERRORS",
    "ProtocolError", "SC2ConnectionError", "ConnectError",  # pysc2's own classes where it is installed
]
