"""TorchRL environments for FOP, all with the same multi-agent keys: the paper's didactic games,
StarCraft (SMAC through ``smac``, or its stand-in without the game), JaxMARL's SMAX and VMAS's
continuous tasks."""

from fop_modules.envs.differential_game import MTQ_QUADRATICS, DifferentialGameEnv
from fop_modules.envs.matrix_game import QTRAN_PAYOFF, MatrixGameEnv
from fop_modules.envs.sizes import EnvSizes, env_sizes
from fop_modules.envs.smac import SMACEnv, StarCraftNotAvailable
from fop_modules.envs.smac_fake import FakeStarCraft2Env
from fop_modules.envs.smax import SMAXEnv  # imports jax only when built
from fop_modules.envs.smax_scripted import focus_fire_policy
from fop_modules.envs.vmas import TeamReward, make_vmas_env

__all__ = [
    "MatrixGameEnv",
    "DifferentialGameEnv",
    "QTRAN_PAYOFF",
    "MTQ_QUADRATICS",
    "SMACEnv",
    "StarCraftNotAvailable",
    "FakeStarCraft2Env",
    "SMAXEnv",
    "focus_fire_policy",
    "make_vmas_env",
    "TeamReward",
    "EnvSizes",
    "env_sizes",
]
