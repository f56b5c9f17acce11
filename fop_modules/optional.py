"""Optional dependencies: import one when a feature needs it, or say how to install it.

Each extra of ``pyproject.toml`` is installed from the repository root with the command in
:data:`INSTALL`; a missing one raises :class:`MissingDependency` naming the feature that was
selected and that command (the recipe prints it and exits with code 2).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["INSTALL", "MissingDependency", "require"]

INSTALL = {
    "smax": 'pip install -e ".[smax]"',  # jaxmarl and jax[cpu], pinned in pyproject.toml
    "tensorboard": 'pip install -e ".[tensorboard]"',
    "wandb": 'pip install -e ".[wandb]"',
    "vmas": 'pip install "vmas>=1.5"',  # a core dependency: `pip install -e .` installs it too
    "render": 'pip install -e ".[render]"',  # imageio and PyAV: videos of VMAS teams and SMAX battles
    "export": 'pip install -e ".[export]"',  # onnx, onnxscript and onnxruntime: ONNX actors
    "pettingzoo": 'pip install -e ".[pettingzoo]"',  # PettingZoo and MPE2 (docs/tutorials/own_env.md)
}


class MissingDependency(ImportError):
    """An optional package that the selected feature needs is not installed."""


def require(module: str, *, needed_for: str, extra: str) -> ModuleType:
    """Imports ``module``, or raises :class:`MissingDependency` with the install command.

    Args:
        module: the module to import, e.g. ``"jaxmarl"``.
        needed_for: what needs it, e.g. ``"SMAXEnv"`` (starts the message).
        extra: the key of :data:`INSTALL` whose command installs it.

    Examples:
        >>> require("math", needed_for="nothing", extra="smax").sqrt(4.0)
        2.0
        >>> require("no_such_module_here", needed_for="logger=wandb", extra="wandb")
        Traceback (most recent call last):
        ...
        fop_modules.optional.MissingDependency: logger=wandb needs the Python package `no_such_module_here`, which is not installed: pip install -e ".[wandb]"
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(
            f"{needed_for} needs the Python package `{module}`, which is not installed: "
            f"{INSTALL[extra]}"
        ) from err
