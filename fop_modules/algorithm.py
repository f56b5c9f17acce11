"""FOP as one algorithm of the training loop: its typed settings (:class:`FOPConfig`) and the
builder of its parts from an env (:func:`build_fop`: networks, mixer, loss, policy).

The recipe's ``algorithm`` section for FOP and its ablations is a :class:`FOPConfig`; a loop of
one's own can build the same parts::

    loss, policy = build_fop(env, FOPConfig(...))

:mod:`fop_modules.presets` holds validated settings per task family for building the parts by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from torch import nn
from torchrl.envs import EnvBase

from fop_modules import networks, recurrent
from fop_modules.envs.sizes import env_sizes
from fop_modules.choices import choices_enum
from fop_modules.loss import EntropyReductionName, FOPLoss, IndividualTemperatureName, LossFunctionName
from fop_modules.mixer import AdvantageFormName, FOPMixer, LinearMixer

__all__ = ["FOPConfig", "build_fop", "Decomposition", "AdvantageForm", "IndividualTemperature",
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
class FOPConfig:
    """FOP's settings beside its rates (:class:`~fop_modules.optimisation.OptimConfig`) and its
    temperature schedule: the networks, the mixer and :class:`~fop_modules.FOPLoss`'s options.
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
    name: str = "fop"  # the name runs are filed under (summary.json, plots)

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


def build_fop(env: EnvBase, algo: FOPConfig) -> tuple[FOPLoss, nn.Module]:
    """Networks sized from ``env``'s specs (:func:`~fop_modules.envs.env_sizes`), the mixer and
    :class:`~fop_modules.FOPLoss` with its value estimator, from ``algo``; returns (loss, policy).

    ``algo.greedy`` fixes alpha (no dual update): the caller's temperature sets it to 0.
    GRU networks (``recurrent``, ``recurrent_critic``) need an env with
    :func:`~fop_modules.recurrent.recurrent_transforms` and discrete actions.
    """
    sizes = env_sizes(env)
    n_agents, obs_dim, state_dim, discrete = sizes.n_agents, sizes.obs_dim, sizes.state_dim, sizes.discrete
    action_dim = sizes.action_dim  # the number of actions, or the size of an action vector
    net = {"hidden": list(algo.hidden), "agent_id": algo.agent_id, "activation": networks.ACTIVATIONS[algo.activation]}
    if discrete:
        n_actions = action_dim
        if algo.recurrent:
            actor = recurrent.recurrent_discrete_actor(
                n_agents, obs_dim, n_actions, hidden=algo.rnn_hidden, agent_id=algo.agent_id
            )
        else:
            actor = networks.discrete_actor(n_agents, obs_dim, n_actions, masked=sizes.masked, **net)
        if algo.recurrent_critic:
            critic = recurrent.recurrent_discrete_critic(
                n_agents, obs_dim, n_actions, hidden=algo.rnn_hidden, agent_id=algo.agent_id
            )
        else:
            critic = networks.discrete_critic(n_agents, obs_dim, n_actions, **net)
    else:
        actor = networks.continuous_actor(n_agents, obs_dim, action_dim, low=sizes.low, high=sizes.high, **net)
        critic = networks.continuous_critic(n_agents, obs_dim, action_dim, **net)
    value_net = networks.value_network(n_agents, obs_dim, **net) if algo.value_network else None

    mixer_args = dict(n_agents=n_agents, state_dim=state_dim, action_dim=action_dim,
                      discrete_actions=discrete)
    if algo.decomposition not in DECOMPOSITIONS:
        raise ValueError(f"FOPConfig.decomposition must be one of {list(DECOMPOSITIONS)}, got {algo.decomposition!r}")
    if DECOMPOSITIONS[algo.decomposition] is FOPMixer:
        mixer = FOPMixer(**mixer_args, n_heads=algo.n_heads, v_hidden=algo.v_hidden,
                         advantage_form=algo.advantage_form)
    else:
        mixer = LinearMixer(**mixer_args, hidden=algo.v_hidden)

    loss = FOPLoss(
        actor, critic, mixer,
        action_space="discrete" if discrete else "continuous",
        value_network=value_net,
        num_qvalue_nets=algo.num_qvalue_nets,
        alpha_init=algo.alpha_init,
        learn_alpha=algo.learn_alpha and not algo.greedy,  # greedy FOP: alpha fixed at 0
        target_entropy=algo.target_entropy,
        num_actions=action_dim if discrete else None,
        individual_temperature=algo.individual_temperature,
        entropy_reduction=algo.entropy_reduction,
        loss_function=algo.loss_function,
    )
    if algo.td_lambda is None:
        loss.make_value_estimator(gamma=algo.gamma)  # one-step TD, eq. (9)
    else:
        from torchrl.objectives.utils import ValueEstimators

        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=algo.gamma, lmbda=algo.td_lambda)
    return loss, actor
