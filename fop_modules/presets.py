"""Named FOP settings per task family, for the public API: what to give FOPMixer, FOPLoss, the
optimisers, the temperature schedule and the update loop.

FOP's settings differ between task families, and the library's defaults can only be one of them
(they are :data:`ONE_STEP`'s). Each preset below is the configuration this project validated on
that family, with the evidence in docs/results.md:

============== ================================================ ===================================
preset         for                                              recipe experiment it equals
============== ================================================ ===================================
``ONE_STEP``   one-step cooperative games with discrete         the default job (``configs/
               actions, payoff tables of any scale (not yet     config.yaml``, the matrix game)
               every shape: see the one-step tutorial)          run for 20k frames, not the
                                                                paper's 10k
``SMAC``       StarCraft-like battles, GRU actors on whole      ``smac_authors`` (SMAC's rewards,
               episodes (the authors' SMAC settings)            max return 20)
``CONTINUOUS`` one-step games with continuous actions           ``mtq`` (the differential game)
============== ================================================ ===================================

``ONE_STEP`` is scale-free: it trains on the reward centred and scaled to a standard deviation
of 7 under uniformly random play (:meth:`FOPPreset.standardise_rewards`), the spread of the
paper's table (7.2) on which its temperature and rates were tuned. A payoff table of any scale
or offset then looks alike to them (docs/results.md).

Examples:
    >>> from fop_modules import FOPLoss, FOPMixer, networks, presets
    >>> preset = presets.ONE_STEP
    >>> loss = FOPLoss(networks.discrete_actor(2, 1, 3), networks.discrete_critic(2, 1, 3),
    ...                FOPMixer(2, 1, 3, **preset.mixer_kwargs()), action_space="discrete",
    ...                **preset.loss_kwargs())
    >>> preset.make_value_estimator(loss)
    >>> sorted(preset.make_optimizers(loss)), type(preset.make_target_updater(loss)).__name__
    (['loss_actor', 'loss_qvalue'], 'FusedSoftUpdate')
    >>> preset.temperature(0), preset.temperature(10_000), preset.reward_std
    (1.0, 0.01, 7.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.objectives import HardUpdate, SoftUpdate, ValueEstimators

from fop_modules.optimisation import OptimConfig
from fop_modules.loss import FOPLoss
from fop_modules.reward_scaling import fit_reward_standardisation
from fop_modules.target_update import FusedSoftUpdate
from fop_modules.temperature import LinearTemperature, TemperatureSchedule

__all__ = ["FOPPreset", "ONE_STEP", "SMAC", "CONTINUOUS", "PRESETS"]


@dataclass(frozen=True)
class FOPPreset:
    """FOP's settings for one task family (see the module's table for the three presets).

    Attributes:
        name: the preset's name (a key of :data:`PRESETS`).
        advantage_form: :class:`~fop_modules.FOPMixer`'s form of eq. (7).
        num_qvalue_nets: :class:`~fop_modules.FOPLoss`'s critics (2: twins, min target).
        value_network: whether to give FOPLoss V_i networks trained by eq. (10) (needed for
            continuous actions); otherwise V_i is the analytic soft value.
        individual_temperature: FOPLoss's ``individual_temperature``.
        entropy_reduction: FOPLoss's ``entropy_reduction`` (sum or mean over agents).
        td_lambda: None: one-step TD target; a number: TD(lambda) over replayed sequences.
        gamma: discount.
        temperature: alpha against env frames (in standardised reward units with ``reward_std``).
        rates: the objectives' learning rates, :meth:`FOPLoss.param_groups`'s ``lr_*`` arguments.
        optim: optimiser, gradient clip and target update.
        batch_size: samples per update (transitions, or episodes with sequence replay).
        frames_per_batch: env frames collected between rounds of updates.
        updates_per_batch: updates per collected batch.
        total_frames: env frames of a whole run (the collector's ``total_frames``).
        reward_std: train on the reward standardised to this std under random play
            (:meth:`standardise_rewards`); None: the env's reward as it is.
    """

    name: str
    advantage_form: Literal["paper", "stopgrad"]
    num_qvalue_nets: int
    value_network: bool
    individual_temperature: Literal["shared", "paper"]
    entropy_reduction: Literal["sum", "mean"]
    td_lambda: float | None
    gamma: float
    temperature: TemperatureSchedule
    rates: dict[str, float | None]
    optim: OptimConfig
    batch_size: int
    frames_per_batch: int
    updates_per_batch: int
    total_frames: int
    reward_std: float | None

    def standardise_rewards(self, env: EnvBase) -> EnvBase:
        """``env`` with its reward centred and scaled to :attr:`reward_std` (fitted to random
        play, :func:`~fop_modules.reward_scaling.fit_reward_standardisation`); ``env`` itself
        when the preset trains on raw rewards. Train on it; evaluate on the raw env.

        Examples:
            >>> from fop_modules.envs import MatrixGameEnv
            >>> env = ONE_STEP.standardise_rewards(MatrixGameEnv([[80.0, -120.0], [-120.0, 0.0]]))
            >>> round(env.transform.scale.item() * 7.0)  # the payoffs' std under random play: 84.9
            85
        """
        if self.reward_std is None:
            return env
        return TransformedEnv(env, fit_reward_standardisation(env, std=self.reward_std))

    def mixer_kwargs(self) -> dict:
        """Keyword arguments of :class:`~fop_modules.FOPMixer` besides its sizes."""
        return {"advantage_form": self.advantage_form}

    def loss_kwargs(self) -> dict:
        """Keyword arguments of :class:`~fop_modules.FOPLoss` besides its networks, the
        ``action_space`` and the ``value_network`` (build one when :attr:`value_network`)."""
        return {
            "num_qvalue_nets": self.num_qvalue_nets,
            "individual_temperature": self.individual_temperature,
            "entropy_reduction": self.entropy_reduction,
        }

    def make_value_estimator(self, loss: FOPLoss) -> None:
        """The TD target of eq. (9): one-step, or TD(lambda) over sequences."""
        if self.td_lambda is None:
            loss.make_value_estimator(gamma=self.gamma)
        else:
            loss.make_value_estimator(ValueEstimators.TDLambda, gamma=self.gamma, lmbda=self.td_lambda)

    def make_optimizers(self, loss: FOPLoss) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per objective (:meth:`FOPLoss.param_groups`) with the preset's rates and
        optimiser (:meth:`OptimConfig.make_optimizer`, as the training loop builds them); clip each
        objective's gradient norm to ``optim.grad_clip`` before its step."""
        groups = loss.param_groups(**self.rates)
        return {key: self.optim.make_optimizer(objective_groups) for key, objective_groups in groups.items()}

    def make_target_updater(self, loss: FOPLoss) -> SoftUpdate | HardUpdate:
        """The target critics' and mixers' update, as the training loop builds it
        (:meth:`OptimConfig.make_target_updater`): polyak (``tau``) or a copy every
        ``value_network_update_interval`` calls of its ``step()``, once per update."""
        return self.optim.make_target_updater(loss)


ONE_STEP = FOPPreset(
    name="one_step",
    advantage_form="stopgrad",  # the authors' form: Q_i keeps its own fit (docs/results.md)
    num_qvalue_nets=1,  # twins can settle in different basins of a one-step game and mislead pi_i
    value_network=False,
    individual_temperature="shared",
    entropy_reduction="sum",  # the paper's log pi_jt
    td_lambda=None,
    gamma=0.99,
    temperature=LinearTemperature(start=1.0, end=0.01, steps=10_000),  # paper Table 2, standardised units
    rates=dict(lr_qvalue=3e-4, lr_mixer=3e-2, lr_value=1e-3, lr_actor=3e-3, lr_alpha=1e-3),
    optim=OptimConfig(optimizer=partial(torch.optim.Adam, eps=1e-5), target_update=partial(FusedSoftUpdate, tau=0.01),
                      grad_clip=10.0),
    batch_size=64,
    frames_per_batch=16,
    updates_per_batch=4,
    # the anneal, then as many frames at the final temperature: on the climbing game 9 runs of
    # 10 reach the optimum instead of 8 (two loops, seeds 0-4; docs/results.md)
    total_frames=20_000,
    reward_std=7.0,  # the paper's table's spread (7.2): any payoff scale then looks alike
)

SMAC = FOPPreset(
    name="smac",
    advantage_form="stopgrad",
    num_qvalue_nets=2,  # the authors' twin critics and mixers
    value_network=False,  # the authors' analytic V_i
    individual_temperature="shared",
    entropy_reduction="mean",  # the authors' - alpha * mean_i log pi_i
    td_lambda=0.8,
    gamma=0.99,
    temperature=LinearTemperature(start=0.5, end=0.05, steps=90_000),  # SMAC rewards (max 20)
    rates=dict(lr_qvalue=5e-4, lr_mixer=None, lr_value=5e-4, lr_actor=5e-4, lr_alpha=1e-3),
    optim=OptimConfig(optimizer=partial(torch.optim.RMSprop, alpha=0.99, eps=1e-5),  # the authors' RMSprop
                      target_update=partial(HardUpdate, value_network_update_interval=200), grad_clip=10.0),
    batch_size=32,  # whole episodes
    frames_per_batch=150,  # about one episode ...
    updates_per_batch=1,  # ... per update, as the authors
    total_frames=2_050_050,  # the authors' 2.05M env steps, in whole batches
    reward_std=None,  # SMAC scales its rewards itself (max return 20)
)

CONTINUOUS = FOPPreset(
    name="continuous",
    advantage_form="stopgrad",
    num_qvalue_nets=1,
    value_network=True,  # V_i networks (eq. 10): no analytic soft value for continuous actions
    individual_temperature="paper",  # alpha_i of the paper (docs/results.md: 10/10 MTQ seeds)
    entropy_reduction="sum",
    td_lambda=None,
    gamma=0.99,
    temperature=LinearTemperature(start=0.1, end=0.01, steps=20_000),
    rates=dict(lr_qvalue=3e-4, lr_mixer=3e-2, lr_value=1e-3, lr_actor=1e-3, lr_alpha=1e-3),
    optim=OptimConfig(optimizer=partial(torch.optim.Adam, eps=1e-5), target_update=partial(FusedSoftUpdate, tau=0.01),
                      grad_clip=10.0),
    batch_size=64,
    frames_per_batch=16,
    updates_per_batch=4,
    total_frames=20_000,  # the paper's 20k steps
    reward_std=None,  # the differential game's rewards are already scaled by 0.1
)

PRESETS = {preset.name: preset for preset in (ONE_STEP, SMAC, CONTINUOUS)}
