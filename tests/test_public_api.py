"""The public face of the library: every module says what it exports (``__all__``), and every
public class or function it defines is among them, so ``from module import *``, the API pages
(docs/api/*.md) and readers agree on what is public."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import fop_modules
import fop_modules.envs

MODULES = sorted(m.name for m in pkgutil.walk_packages(fop_modules.__path__, "fop_modules."))


@pytest.mark.parametrize("name", MODULES)
def test_every_public_definition_is_exported(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    defined = {
        attr for attr, obj in vars(module).items()
        if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == name
    }
    assert defined <= set(module.__all__), f"{name}: public but not in __all__: {sorted(defined - set(module.__all__))}"
    missing = [attr for attr in module.__all__ if not hasattr(module, attr)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"


def test_the_envs_package_exports_the_team_reward_transform():
    """A user bringing their own VMAS env (docs/tutorials/own_env.md) needs it."""
    from fop_modules.envs import TeamReward
    from fop_modules.envs.vmas import TeamReward as defined

    assert TeamReward is defined and "TeamReward" in fop_modules.envs.__all__
