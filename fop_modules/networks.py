"""Per-agent actor, critic and V networks with parameters shared across agents.

Every network reads per-agent inputs of shape [*B, N, F], appends a one-hot agent id (so shared
parameters can still specialise per agent, as the authors' PyMARL code does) and applies one MLP
to every agent at once. Keys follow TorchRL's multi-agent convention (group ``"agents"``).

=====================  ==========================================  =============================
builder                reads                                       writes
=====================  ==========================================  =============================
discrete_actor         (agents, observation), (agents, action_mask)  (agents, logits), (agents, action)
continuous_actor       (agents, observation)                        (agents, loc/scale), (agents, action)
discrete_critic        (agents, observation)                        (agents, action_value) [*B,N,A]
continuous_critic      (agents, observation), (agents, action)      (agents, state_action_value)
value_network          (agents, observation)                        (agents, state_value)
=====================  ==========================================  =============================
"""

from __future__ import annotations

from typing import Sequence

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.modules import (
    MLP,
    MaskedCategorical,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhNormal,
)

__all__ = [
    "AgentMLP",
    "append_agent_id",
    "first_layer_with_agent_id",
    "discrete_actor",
    "continuous_actor",
    "discrete_critic",
    "continuous_critic",
    "value_network",
    "ACTIVATIONS",
]

# the hidden layers' activations by name (configs: ``algorithm.activation``)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}

OBS_KEY = ("agents", "observation")
MASK_KEY = ("agents", "action_mask")
ACTION_KEY = ("agents", "action")


def append_agent_id(x: Tensor) -> Tensor:
    """Per-agent inputs [*B, N, F] -> [*B, N, F + N] with each agent's one-hot id appended, so
    parameters shared across agents can still specialise (as the authors' PyMARL agents do)."""
    n_agents = x.shape[-2]
    ids = torch.eye(n_agents, dtype=x.dtype, device=x.device)  # [N, N]
    return torch.cat([x, ids.expand(*x.shape[:-1], n_agents)], -1)


class AgentMLP(nn.Module):
    """One MLP applied to every agent, with an optional one-hot agent id appended to its input.

    Args:
        in_features: size of one agent's input (all inputs given to ``forward``, concatenated).
        out_features: size of one agent's output.
        n_agents: number of agents N (the second-to-last input dimension).
        hidden: hidden layer sizes.
        agent_id: append the one-hot agent id to the input.
        activation: activation class between layers.
        last_layer_scale: if given, the last layer's weights are multiplied by it and its bias
            zeroed (a near-constant initial output, e.g. a policy that starts near action 0).

    Examples:
        >>> import torch
        >>> net = AgentMLP(in_features=5, out_features=3, n_agents=4)
        >>> net(torch.randn(8, 4, 5)).shape
        torch.Size([8, 4, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_agents: int,
        *,
        hidden: Sequence[int] = (64, 64),
        agent_id: bool = True,
        activation: type[nn.Module] = nn.ReLU,
        last_layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1 or n_agents < 1:
            raise ValueError(
                f"AgentMLP needs in_features, out_features, n_agents >= 1, got "
                f"{in_features}, {out_features}, {n_agents}"
            )
        self.in_features, self.n_agents, self.agent_id = in_features, n_agents, agent_id
        self.mlp = MLP(
            in_features=in_features + (n_agents if agent_id else 0),
            out_features=out_features,
            num_cells=list(hidden),
            activation_class=activation,
        )
        if last_layer_scale is not None:
            last = [m for m in self.mlp.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                last.weight.mul_(last_layer_scale)
                last.bias.zero_()

    def forward(self, *inputs: Tensor) -> Tensor:
        dtype = torch.get_default_dtype()
        x = inputs[0].to(dtype) if len(inputs) == 1 else torch.cat([t.to(dtype) for t in inputs], -1)
        if x.dim() < 2 or x.shape[-2:] != (self.n_agents, self.in_features):
            raise ValueError(
                f"AgentMLP expects inputs of shape [*B, {self.n_agents}, {self.in_features}] "
                f"(agents, features) once concatenated, got {list(x.shape)}"
            )
        if self.agent_id:
            x = append_agent_id(x)
        return self.mlp(x)


def first_layer_with_agent_id(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(append_agent_id(x))`` without building the wider input: the one-hot id's columns
    of the weight are agent i's bias, added to the product with x [*B, N, F] (same parameters,
    the same values up to rounding, no [*B, N, F + N] copy)."""
    features = x.shape[-1]
    weight = layer.weight
    out = torch.nn.functional.linear(x, weight[:, :features], layer.bias)
    return out + weight[:, features:].T  # [N, H]: row i = the weight of agent i's id


def discrete_actor(
    n_agents: int,
    obs_dim: int,
    n_actions: int,
    *,
    hidden: Sequence[int] = (64, 64),
    agent_id: bool = True,
    activation: type[nn.Module] = nn.ReLU,
    masked: bool = True,
    neg_inf: float = float("-inf"),
) -> ProbabilisticActor:
    """Softmax policy pi_i(u_i | o_i) over available actions, shared across agents.

    ``neg_inf`` is the logit of masked actions: -inf gives them probability 0 exactly (FOPLoss
    masks its sums); a finite value (e.g. -18) keeps ``sum p log p`` finite for losses that do
    not (TorchRL's ``DiscreteSACLoss``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> actor = discrete_actor(n_agents=2, obs_dim=3, n_actions=4)
        >>> td = TensorDict({("agents", "observation"): torch.randn(5, 2, 3),
        ...                  ("agents", "action_mask"): torch.ones(5, 2, 4, dtype=torch.bool)}, [5])
        >>> actor(td)["agents", "action"].shape
        torch.Size([5, 2])
    """
    net = AgentMLP(obs_dim, n_actions, n_agents, hidden=hidden, agent_id=agent_id,
                   activation=activation)
    module = TensorDictModule(net, in_keys=[OBS_KEY], out_keys=[("agents", "logits")])
    dist_keys = {"logits": ("agents", "logits")}
    if masked:
        dist_keys["mask"] = MASK_KEY
    return ProbabilisticActor(
        module,
        in_keys=dist_keys,
        out_keys=[ACTION_KEY],
        distribution_class=MaskedCategorical if masked else torch.distributions.Categorical,
        distribution_kwargs={"neg_inf": neg_inf} if masked else None,
    )


def continuous_actor(
    n_agents: int,
    obs_dim: int,
    action_dim: int,
    *,
    low: float,
    high: float,
    hidden: Sequence[int] = (64, 64),
    agent_id: bool = True,
    activation: type[nn.Module] = nn.ReLU,
    init_scale: float | None = 0.01,
) -> ProbabilisticActor:
    """Tanh-Gaussian policy on [low, high], shared across agents.

    With ``init_scale`` small, the initial mean action is the centre of the box (the paper's
    MTQ runs start their policies at (0, 0)) and the pre-tanh std is 1.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> actor = continuous_actor(n_agents=2, obs_dim=1, action_dim=1, low=-10, high=10)
        >>> actor(TensorDict({("agents", "observation"): torch.ones(5, 2, 1)}, [5]))[
        ...     "agents", "action"].shape
        torch.Size([5, 2, 1])
    """
    if not high > low:
        raise ValueError(f"continuous_actor needs high > low, got low={low}, high={high}")
    net = AgentMLP(
        obs_dim,
        2 * action_dim,
        n_agents,
        hidden=hidden,
        agent_id=agent_id,
        activation=activation,
        last_layer_scale=init_scale,
    )
    module = TensorDictModule(
        nn.Sequential(net, NormalParamExtractor()),
        in_keys=[OBS_KEY],
        out_keys=[("agents", "loc"), ("agents", "scale")],
    )
    return ProbabilisticActor(
        module,
        in_keys=[("agents", "loc"), ("agents", "scale")],
        out_keys=[ACTION_KEY],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": float(low), "high": float(high)},
    )


def discrete_critic(
    n_agents: int,
    obs_dim: int,
    n_actions: int,
    *,
    hidden: Sequence[int] = (64, 64),
    agent_id: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> TensorDictModule:
    """Q_i(o_i, .) for every action at once: [*B, N, A] (the authors' MLP critic).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> critic = discrete_critic(n_agents=2, obs_dim=3, n_actions=4)
        >>> critic(TensorDict({("agents", "observation"): torch.randn(5, 2, 3)}, [5]))[
        ...     "agents", "action_value"].shape
        torch.Size([5, 2, 4])
    """
    net = AgentMLP(obs_dim, n_actions, n_agents, hidden=hidden, agent_id=agent_id,
                   activation=activation)
    return TensorDictModule(net, in_keys=[OBS_KEY], out_keys=[("agents", "action_value")])


def continuous_critic(
    n_agents: int,
    obs_dim: int,
    action_dim: int,
    *,
    hidden: Sequence[int] = (64, 64),
    agent_id: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> TensorDictModule:
    """Q_i(o_i, u_i): [*B, N, 1].

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> critic = continuous_critic(n_agents=2, obs_dim=3, action_dim=1)
        >>> td = TensorDict({("agents", "observation"): torch.randn(5, 2, 3),
        ...                  ("agents", "action"): torch.randn(5, 2, 1)}, [5])
        >>> critic(td)["agents", "state_action_value"].shape
        torch.Size([5, 2, 1])
    """
    net = AgentMLP(obs_dim + action_dim, 1, n_agents, hidden=hidden, agent_id=agent_id,
                   activation=activation)
    return TensorDictModule(
        net, in_keys=[OBS_KEY, ACTION_KEY], out_keys=[("agents", "state_action_value")]
    )


def value_network(
    n_agents: int,
    obs_dim: int,
    *,
    hidden: Sequence[int] = (64, 64),
    agent_id: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> TensorDictModule:
    """V_i(o_i): [*B, N, 1], trained by eq. (10) in the paper's form of FOP.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> v = value_network(n_agents=2, obs_dim=3)
        >>> v(TensorDict({("agents", "observation"): torch.randn(5, 2, 3)}, [5]))[
        ...     "agents", "state_value"].shape
        torch.Size([5, 2, 1])
    """
    net = AgentMLP(obs_dim, 1, n_agents, hidden=hidden, agent_id=agent_id,
                   activation=activation)
    return TensorDictModule(net, in_keys=[OBS_KEY], out_keys=[("agents", "state_value")])
