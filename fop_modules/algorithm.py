"""Every algorithm of the training loop has one shape: a typed config (a dataclass the recipe's
``algorithm`` section instantiates by its ``_target_``) whose :meth:`build` returns the parts
(:class:`AlgorithmParts`: loss, collection policy, objectives with their rates), and the parts
make the Lightning learner (:meth:`AlgorithmParts.learner`).

=============================================  ===============================================
config                                         algorithm
=============================================  ===============================================
:class:`FOPConfig`                             FOP and its ablations (configs/algorithm/fop*.yaml)
:class:`~fop_modules.baselines.MASACConfig`    multi-agent SAC (masac.yaml)
:class:`~fop_modules.baselines.MADDPGConfig`   MADDPG (maddpg.yaml)
:class:`~fop_modules.baselines.ValueDecompositionConfig`  QMIX and VDN (qmix.yaml, vdn.yaml)
=============================================  ===============================================

Each config also says whether its agents are GRUs (:attr:`uses_gru`: the env then needs
:func:`~fop_modules.recurrent.recurrent_transforms`) and checks the replay it learns from
(``check_replay``: transitions or whole episodes). A loop of one's own builds FOP the same way::

    parts = FOPConfig(...).build(env, total_frames)
    parts.loss, parts.policy, parts.objectives

:mod:`fop_modules.presets` holds validated settings per task family for building the parts by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, List, Optional, Protocol

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import EnvBase
from torchrl.objectives import LossModule, ValueEstimators

from fop_modules import networks, recurrent
from fop_modules.envs.sizes import env_sizes
from fop_modules.choices import choices_enum
from fop_modules.loss import EntropyReductionName, FOPLoss, IndividualTemperatureName, LossFunctionName
from fop_modules.mixer import AdvantageFormName, FOPMixer, LinearMixer
from fop_modules.lightning import FOPLightningModule, MARLLightningModule
from fop_modules.loop_config import CollectConfig
from fop_modules.optimisation import Objective, OptimConfig, check_rates
from fop_modules.temperature import TemperatureSchedule

__all__ = ["AlgorithmConfig", "AlgorithmParts", "FOPParts", "FOPConfig", "Decomposition", "AdvantageForm", "IndividualTemperature",
           "EntropyReduction", "LossFunction", "Activation"]


# The choices of FOPConfig's fields: str Enums (equal to their values) that Hydra's structured
# configs check while composing, read off the library's own option types and registries.
DECOMPOSITIONS = {"fop": FOPMixer, "linear": LinearMixer}  # eq. (7) | DOP's sum_i k_i(s) Q_i + b(s)
Decomposition = choices_enum("Decomposition", DECOMPOSITIONS, "FOPConfig.decomposition: the mixer.")
AdvantageForm = choices_enum("AdvantageForm", AdvantageFormName, "FOPConfig.advantage_form (FOPMixer's).")
IndividualTemperature = choices_enum("IndividualTemperature", IndividualTemperatureName,
                                     "FOPConfig.individual_temperature (FOPLoss's).")
EntropyReduction = choices_enum("EntropyReduction", EntropyReductionName, "FOPConfig.entropy_reduction (FOPLoss's).")
LossFunction = choices_enum("LossFunction", LossFunctionName, "FOPConfig.loss_function (FOPLoss's).")
Activation = choices_enum("Activation", networks.ACTIVATIONS, "FOPConfig.activation (networks.ACTIVATIONS).")


@dataclass
class AlgorithmParts:
    """What an algorithm's builder returns, and the learner it trains with.

    Attributes:
        loss: the TorchRL loss (holds every network; target networks are built from it).
        policy: the collection policy, exploration included (its deterministic mode is the
            greedy evaluation policy).
        objectives: ``name -> Objective`` (loss key, parameters and their rates), stepped in order.
        process_batch: applied to every collected batch before storage, or None.
        exploration: the annealed exploration module inside ``policy``, or None.
        joint_q: ``batch -> {"q_i": [*B, N, A], "q_jt": [*B, 1]}``, the learned values of given
            joint actions (the matrix game's tables), or None.
    """

    loss: LossModule
    policy: nn.Module
    objectives: dict[str, Objective]
    process_batch: Callable[[TensorDictBase], TensorDictBase] | None = None
    exploration: nn.Module | None = None
    joint_q: Callable[[TensorDictBase], dict[str, torch.Tensor]] | None = field(default=None, repr=False)

    def learner(self, make_env: Callable[[], EnvBase], *, collect: CollectConfig, optim: OptimConfig,
                seed: int = 0, temperature: TemperatureSchedule | None = None) -> MARLLightningModule:
        """The Lightning module that trains these parts: :class:`MARLLightningModule` (one call of
        the loss, one step per objective). ``temperature`` is FOP's (:class:`FOPParts`); these
        algorithms set their own exploration and refuse one."""
        if temperature is not None:
            raise ValueError(
                f"a temperature schedule sets FOP's alpha; {type(self.loss).__name__} has its own "
                "exploration (a learned alpha, epsilon or noise): pass no temperature"
            )
        return MARLLightningModule(
            self.loss, self.policy, self.objectives, make_env, collect=collect, optim=optim, seed=seed,
            process_batch=self.process_batch, exploration=self.exploration, joint_q=self.joint_q,
        )


@dataclass
class FOPParts(AlgorithmParts):
    """FOP's parts: its learner is :class:`FOPLightningModule` (Algorithm 1's order of updates,
    alpha from ``temperature``, or learned when it is None)."""

    def learner(self, make_env: Callable[[], EnvBase], *, collect: CollectConfig, optim: OptimConfig,
                seed: int = 0, temperature: TemperatureSchedule | None = None) -> FOPLightningModule:
        return FOPLightningModule(self.loss, self.policy, self.objectives, make_env, collect=collect, optim=optim,
                                  temperature=temperature, seed=seed)


class AlgorithmConfig(Protocol):
    """The shape of every algorithm's typed config (FOPConfig and the baselines' configs)."""

    name: str  # the name runs are filed under (summary.json, plots)
    takes_temperature: ClassVar[bool]  # whether a temperature schedule sets its alpha (FOP's)

    @property
    def uses_gru(self) -> bool:
        """Whether its agents are GRUs (the env needs the recurrent transforms, sized ``rnn_hidden``)."""

    def check_replay(self, sequence_length: int | None) -> None:
        """Raises ValueError unless it learns from this replay: transitions (``None``) or slices."""

    def build(self, env: EnvBase, total_frames: int) -> AlgorithmParts:
        """Its parts for ``env`` (sizes read off its specs) and a run of ``total_frames``."""


@dataclass
class FOPConfig:
    """FOP's settings beside the loop's (:class:`~fop_modules.optimisation.OptimConfig`) and its
    temperature schedule: the networks, the mixer, :class:`~fop_modules.FOPLoss`'s options and
    the objectives' learning rates (:attr:`rates`).
    The recipe's ``algorithm`` section for FOP and its ablations (configs/algorithm/fop.yaml says
    what each field does); :func:`build_fop` builds the parts from it."""

    decomposition: Decomposition
    advantage_form: AdvantageForm
    n_heads: int
    v_hidden: int
    hidden: List[int]
    activation: Activation
    agent_id: bool
    recurrent: bool
    rnn_hidden: int
    recurrent_critic: bool
    value_network: bool
    num_qvalue_nets: int
    greedy: bool
    learn_alpha: bool
    alpha_init: float
    target_entropy: Any  # a number or "auto" (Any: OmegaConf 2.3 fails on a Union here)
    individual_temperature: IndividualTemperature
    entropy_reduction: EntropyReduction
    loss_function: LossFunction
    gamma: float
    td_lambda: Optional[float]
    lr_qvalue: float  # critics, eq. (9)
    lr_mixer: Optional[float]  # the mixer's own group in eq. (9)'s optimiser (None: at lr_qvalue)
    lr_value: float  # V_i networks, eq. (10)
    lr_actor: float  # policies, eq. (11)
    lr_alpha: float  # the learned dual temperature
    name: str = "fop"  # the name runs are filed under (summary.json, plots)
    takes_temperature: ClassVar[bool] = True  # alpha from a schedule, or learned (learn_alpha)

    def __post_init__(self) -> None:
        """Checks the fields before anything is built: the loss's and the mixer's options by their
        own rules (:meth:`FOPLoss.check_options`, :meth:`FOPMixer.check_options`, whose messages
        name them), the rest here."""
        FOPLoss.check_options(
            num_qvalue_nets=self.num_qvalue_nets, value_network=self.value_network,
            individual_temperature=self.individual_temperature, entropy_reduction=self.entropy_reduction,
            learn_alpha=self.learn_alpha and not self.greedy, alpha_init=self.alpha_init,
            target_entropy=self.target_entropy, loss_function=self.loss_function,
        )
        if self.decomposition == "fop":
            FOPMixer.check_options(n_heads=self.n_heads, v_hidden=self.v_hidden, advantage_form=self.advantage_form)
        elif self.v_hidden < 1:  # LinearMixer's hidden size
            raise ValueError(f"FOPConfig.v_hidden must be >= 1, got {self.v_hidden}")
        if self.rnn_hidden < 1:
            raise ValueError(f"FOPConfig.rnn_hidden must be >= 1, got {self.rnn_hidden}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"FOPConfig.hidden must be a non-empty list of sizes >= 1, got {self.hidden}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"FOPConfig.gamma must be in [0, 1], got {self.gamma}")
        if self.td_lambda is not None and not 0 <= self.td_lambda <= 1:
            raise ValueError(f"FOPConfig.td_lambda must be in [0, 1] or None, got {self.td_lambda}")
        check_rates("FOPConfig", optional=("lr_mixer",), **self.rates)

    @property
    def rates(self) -> dict[str, float | None]:
        """The objectives' rates as :meth:`FOPLoss.param_groups` takes them."""
        return {"lr_qvalue": self.lr_qvalue, "lr_mixer": self.lr_mixer, "lr_value": self.lr_value,
                "lr_actor": self.lr_actor, "lr_alpha": self.lr_alpha}

    @property
    def uses_gru(self) -> bool:
        return bool(self.recurrent or self.recurrent_critic)

    def check_replay(self, sequence_length: int | None) -> None:
        """GRU networks learn from replayed episodes, and TD(lambda) runs along them; one-step TD
        of MLP networks learns from transitions (``sequence_length=None``)."""
        if self.uses_gru and sequence_length is None:
            raise ValueError(
                "FOPConfig.recurrent / recurrent_critic need CollectConfig.sequence_length (slices of up to "
                "that many steps; the episode limit replays whole episodes)"
            )
        if self.td_lambda is not None and sequence_length is None:
            raise ValueError(
                "FOPConfig.td_lambda needs CollectConfig.sequence_length: TD(lambda) runs along the time of "
                "replayed trajectory slices (None td_lambda: one-step TD on transitions)"
            )
        if sequence_length is not None and not (self.uses_gru or self.td_lambda is not None):
            raise ValueError(
                f"CollectConfig.sequence_length={sequence_length} replays trajectory slices, which only a "
                "recurrent FOP (FOPConfig.recurrent / recurrent_critic) or TD(lambda) (FOPConfig.td_lambda) "
                "reads: set CollectConfig.sequence_length=None to replay transitions"
            )

    def build(self, env: EnvBase, total_frames: int | None = None) -> FOPParts:
        """Networks sized from ``env``'s specs (:func:`~fop_modules.envs.env_sizes`), the mixer,
        :class:`~fop_modules.FOPLoss` with its value estimator and the objectives at this config's
        rates (``total_frames`` is not needed: FOP anneals nothing by the run's length).

        ``greedy`` fixes alpha (no dual update): the caller's temperature sets it to 0.
        GRU networks (``recurrent``, ``recurrent_critic``) need an env with
        :func:`~fop_modules.recurrent.recurrent_transforms` and discrete actions.
        """
        sizes = env_sizes(env)
        n_agents, obs_dim, state_dim, discrete = sizes.n_agents, sizes.obs_dim, sizes.state_dim, sizes.discrete
        action_dim = sizes.action_dim  # the number of actions, or the size of an action vector
        activation = networks.ACTIVATIONS[self.activation]
        net = {"hidden": list(self.hidden), "agent_id": self.agent_id, "activation": activation}
        if discrete:
            n_actions = action_dim
            if self.recurrent:
                actor = recurrent.recurrent_discrete_actor(
                    n_agents, obs_dim, n_actions, hidden=self.rnn_hidden, agent_id=self.agent_id
                )
            else:
                actor = networks.discrete_actor(n_agents, obs_dim, n_actions, masked=sizes.masked, **net)
            if self.recurrent_critic:
                critic = recurrent.recurrent_discrete_critic(
                    n_agents, obs_dim, n_actions, hidden=self.rnn_hidden, agent_id=self.agent_id
                )
            else:
                critic = networks.discrete_critic(n_agents, obs_dim, n_actions, **net)
        else:
            actor = networks.continuous_actor(n_agents, obs_dim, action_dim, low=sizes.low, high=sizes.high, **net)
            critic = networks.continuous_critic(n_agents, obs_dim, action_dim, **net)
        value_net = networks.value_network(n_agents, obs_dim, **net) if self.value_network else None

        mixer_args = dict(n_agents=n_agents, state_dim=state_dim, action_dim=action_dim,
                          discrete_actions=discrete)
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"FOPConfig.decomposition must be one of {list(DECOMPOSITIONS)}, got {self.decomposition!r}")
        if DECOMPOSITIONS[self.decomposition] is FOPMixer:
            mixer = FOPMixer(**mixer_args, n_heads=self.n_heads, v_hidden=self.v_hidden,
                             advantage_form=self.advantage_form)
        else:
            mixer = LinearMixer(**mixer_args, hidden=self.v_hidden)

        loss = FOPLoss(
            actor, critic, mixer,
            action_space="discrete" if discrete else "continuous",
            value_network=value_net,
            num_qvalue_nets=self.num_qvalue_nets,
            alpha_init=self.alpha_init,
            learn_alpha=self.learn_alpha and not self.greedy,  # greedy FOP: alpha fixed at 0
            target_entropy=self.target_entropy,
            num_actions=action_dim if discrete else None,
            individual_temperature=self.individual_temperature,
            entropy_reduction=self.entropy_reduction,
            loss_function=self.loss_function,
        )
        if self.td_lambda is None:
            loss.make_value_estimator(gamma=self.gamma)  # one-step TD, eq. (9)
        else:
            loss.make_value_estimator(ValueEstimators.TDLambda, gamma=self.gamma, lmbda=self.td_lambda)
        objectives = FOPLightningModule.fop_objectives(loss, **self.rates)
        return FOPParts(loss, actor, objectives, joint_q=loss.joint_q)
