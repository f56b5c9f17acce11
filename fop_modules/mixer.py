"""Mixers that turn individual Q values into the joint Q_jt.

:class:`FOPMixer` is FOP's IGO factorisation (paper eq. 7, sec. 4.3):

    Q_jt(tau, u) = sum_i lambda_i(tau, u) [Q_i(tau_i, u_i) - V_i(tau_i)] + V_jt(tau)

with a positive multi-head lambda network (QPLEX's weight net) and a joint V network.
:class:`LinearMixer` is DOP's linear decomposition, Q_jt = sum_i k_i(s) Q_i + b(s), used for the
paper's Fig. 3 ablation. Both read and write the same tensordict keys, so either can be given to
:class:`~fop_modules.FOPLoss`.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

__all__ = ["FOPMixer", "LinearMixer", "QattenWeights", "AdvantageFormName"]

AdvantageFormName = Literal["stopgrad", "paper"]  # the authors' code | eq. (7) as written

LAMBDA_EPS = 1e-10  # keeps every lambda_i (and Qatten weight) strictly positive, as the authors do

DEFAULT_IN_KEYS: tuple[NestedKey, ...] = (
    ("agents", "chosen_action_value"),  # Q_i(tau_i, u_i)   [*B, N, 1]
    ("agents", "state_value"),  # V_i(tau_i)              [*B, N, 1]
    "state",  # s                                          [*B, S]
    ("agents", "action"),  # u_i: index [*B, N] (discrete) or [*B, N, action_dim] (continuous)
)
DEFAULT_OUT_KEYS: tuple[NestedKey, ...] = (
    "q_jt",  # Q_jt(tau, u)            [*B, 1]
    ("agents", "lambda"),  # lambda_i(tau, u)   [*B, N, 1]
    "mixer_regularizer",  # Qatten logit penalty per sample [*B, 1] (zeros without Qatten)
)


class QattenWeights(nn.Module):
    """Qatten's attention weights w_i(s) over agents (the authors' first upload and re-release).

    Per head h: w_h = softmax_i(selector_h(s) . key_h(s_i) / sqrt(embed)), where s_i are the
    per-ally features found at ``state[..., i * unit_dim : (i + 1) * unit_dim]``;
    w_i = sum_h w_h,i + LAMBDA_EPS. The regulariser is ``reg_coef * sum_h mean(logit_h ** 2)``.

    Args:
        n_agents: number of agents N.
        state_dim: size of the global state S.
        unit_dim: size of one ally's block at the start of the state (N * unit_dim <= S).
        n_heads: attention heads (authors: 4).
        hypernet_embed: hidden size of the selector network (authors: 64).
        embed_dim: attention embedding size (authors: 32).
        reg_coef: weight of the logit-magnitude penalty (authors: 0.001).

    Examples:
        >>> import torch
        >>> qatten = QattenWeights(n_agents=3, state_dim=20, unit_dim=5)  # 3 allies x 5 features first
        >>> weights, penalty = qatten(torch.randn(8, 20))
        >>> weights.shape, penalty.shape, bool((weights > 0).all())
        (torch.Size([8, 3, 1]), torch.Size([8, 1]), True)
        >>> torch.allclose(weights.sum(-2), torch.full((8, 1), 4.0), atol=1e-6)  # 4 heads, each sums to 1
        True
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        unit_dim: int,
        *,
        n_heads: int = 4,
        hypernet_embed: int = 64,
        embed_dim: int = 32,
        reg_coef: float = 1e-3,
    ) -> None:
        super().__init__()
        if n_agents * unit_dim > state_dim:
            raise ValueError(
                f"QattenWeights needs n_agents * unit_dim <= state_dim, got {n_agents} * "
                f"{unit_dim} > {state_dim}: unit_dim must be the size of one ally's features"
            )
        self.n_agents, self.unit_dim, self.embed_dim = n_agents, unit_dim, embed_dim
        self.reg_coef = reg_coef
        self.selectors = nn.ModuleList(
            nn.Sequential(
                nn.Linear(state_dim, hypernet_embed),
                nn.ReLU(),
                nn.Linear(hypernet_embed, embed_dim, bias=False),
            )
            for _ in range(n_heads)
        )
        self.keys = nn.ModuleList(
            nn.Linear(unit_dim, embed_dim, bias=False) for _ in range(n_heads)
        )

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """Returns weights [*B, N, 1] and the per-sample regulariser [*B, 1]."""
        units = state[..., : self.n_agents * self.unit_dim]
        units = units.unflatten(-1, (self.n_agents, self.unit_dim))  # [*B, N, unit_dim]
        weights, penalty = 0.0, 0.0
        for selector, key in zip(self.selectors, self.keys):
            query = selector(state).unsqueeze(-1)  # [*B, embed, 1]
            logits = (key(units) @ query).squeeze(-1)  # [*B, N]
            weights = weights + torch.softmax(logits / math.sqrt(self.embed_dim), dim=-1)
            penalty = penalty + logits.pow(2).mean(-1, keepdim=True)  # [*B, 1]
        return (weights + LAMBDA_EPS).unsqueeze(-1), self.reg_coef * penalty


class _MixerBase(TensorDictModuleBase):
    """Key handling and input checks shared by the mixers."""

    # Also read the values: discrete action indices in range, a finite state (one synchronisation
    # per call; set False on the instance to skip it).
    check_values: bool = True

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        action_dim: int,
        discrete_actions: bool,
        in_keys: Sequence[NestedKey] | None,
        out_keys: Sequence[NestedKey] | None,
    ) -> None:
        super().__init__()
        if n_agents < 1 or state_dim < 1 or action_dim < 1:
            raise ValueError(
                f"{type(self).__name__} needs n_agents, state_dim and action_dim >= 1, got "
                f"{n_agents}, {state_dim}, {action_dim}"
            )
        self.in_keys = list(in_keys if in_keys is not None else DEFAULT_IN_KEYS)
        self.out_keys = list(out_keys if out_keys is not None else DEFAULT_OUT_KEYS)
        if len(self.in_keys) != 4 or len(self.out_keys) != 3:
            raise ValueError(
                "mixer in_keys are (chosen Q_i, V_i, state, action) and out_keys are "
                f"(Q_jt, lambda, regulariser); got {self.in_keys} and {self.out_keys}"
            )
        self.n_agents, self.state_dim = n_agents, state_dim
        self.action_dim, self.discrete_actions = action_dim, discrete_actions

    def _check(self, q: Tensor, v: Tensor, state: Tensor, action: Tensor) -> Tensor:
        """Checks shapes and returns the joint action features [*B, N * action_dim]."""
        n, batch = self.n_agents, q.shape[:-2]
        expected = {
            self.in_keys[0]: (q, (*batch, n, 1)),
            self.in_keys[1]: (v, (*batch, n, 1)),
            self.in_keys[2]: (state, (*batch, self.state_dim)),
        }
        if q.dim() < 2 or q.shape[-2:] != (n, 1):
            raise ValueError(
                f"{type(self).__name__}: {self.in_keys[0]!r} must have shape [*B, {n}, 1], "
                f"got {tuple(q.shape)}"
            )
        for key, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{type(self).__name__}: {key!r} must have shape {list(shape)}, got "
                    f"{list(tensor.shape)}"
                )
        if self.discrete_actions:
            if tuple(action.shape) not in ((*batch, n), (*batch, n, 1)):
                raise ValueError(
                    f"{type(self).__name__}: {self.in_keys[3]!r} must hold action indices of "
                    f"shape {[*batch, n]}, got {list(action.shape)}"
                )
            if action.dtype.is_floating_point or action.dtype.is_complex or action.dtype == torch.bool:
                raise TypeError(
                    f"{type(self).__name__}: {self.in_keys[3]!r} must hold integer action indices, "
                    f"got {action.dtype} (float indices are not rounded: convert them with .long())"
                )
            index = action.reshape(*batch, n).long()
        else:
            if tuple(action.shape) != (*batch, n, self.action_dim):
                raise ValueError(
                    f"{type(self).__name__}: {self.in_keys[3]!r} must have shape "
                    f"{[*batch, n, self.action_dim]}, got {list(action.shape)}"
                )
            index = None
        if self.check_values:
            self._check_values(index, state)
        features = action.to(q.dtype) if index is None else F.one_hot(index, self.action_dim).to(q.dtype)
        return features.flatten(-2)  # [*B, N * action_dim] (one-hot [*B, N, A] when discrete)

    def _check_values(self, index: Tensor | None, state: Tensor) -> None:
        """Discrete action indices in [0, action_dim) and a finite state; one device
        synchronisation (the state is scanned element-wise only if its sum is not finite)."""
        out_of_range = state.new_zeros((), dtype=torch.bool)
        if index is not None:
            out_of_range = ((index < 0) | (index >= self.action_dim)).any().to(state.device)
        out_of_range, suspect = torch.stack([out_of_range, ~state.sum().isfinite()]).tolist()
        if out_of_range:
            raise ValueError(
                f"{type(self).__name__}: {self.in_keys[3]!r} holds action indices from "
                f"{index.min().item()} to {index.max().item()}; with action_dim={self.action_dim} "
                f"they must lie in [0, {self.action_dim - 1}]"
            )
        if suspect and not torch.isfinite(state).all():
            raise ValueError(
                f"{type(self).__name__}: {self.in_keys[2]!r} holds NaN or infinite values "
                "(check_values=False skips this check)"
            )

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        q, v, state, action = (tensordict.get(key) for key in self.in_keys)
        for key, value in zip(self.in_keys, (q, v, state, action)):
            if value is None:
                raise KeyError(f"{type(self).__name__}: the input tensordict has no {key!r}")
        for key, value in zip(self.out_keys, self.mix(q, v, state, action)):
            tensordict.set(key, value)
        return tensordict

    def mix(
        self, q: Tensor, v: Tensor, state: Tensor, action: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class FOPMixer(_MixerBase):
    """FOP's mixer: Q_jt = sum_i lambda_i(s, u) [Q_i - V_i] + V_jt(s)  (eq. 7, sec. 4.3).

    lambda_i(s, u) = sum_h |k_h(s)| * sigmoid(a_h(s))_i * sigmoid(c_h([s, u]))_i + LAMBDA_EPS, with
    u the joint action (one-hot per agent when discrete), and V_jt(s) = Linear-ReLU-Linear.

    Args:
        n_agents: number of agents N.
        state_dim: size of the global state S.
        action_dim: actions per agent (discrete: number of actions A, the input holds indices;
            continuous: size of one agent's action vector).
        discrete_actions: whether ``("agents", "action")`` holds indices (True) or vectors.
        n_heads: heads of the lambda network (authors: 4).
        v_hidden: hidden size of the V_jt network (authors: 32).
        advantage_form: ``"stopgrad"`` (default) for the authors' code, Q_jt = sum_i (lambda_i - 1)
            stopgrad(Q_i - V_i) + sum_i Q_i + V(s): eq. 7 with V_jt = sum_i V_i + V(s), but Q_i is
            trained through the plain sum (as in VDN) and the advantage only trains lambda;
            ``"paper"`` for eq. 7 exactly (Q_i receives lambda_i times the TD gradient). With
            the analytic soft V_i (``FOPLoss(value_network=None)``) the paper's form lets Q_i
            drift: the TD loss is flat along Q_i + c (docs/results.md, matrix game).
        qatten: optional :class:`QattenWeights`; with it (authors' first upload), Q_i and the
            advantage are multiplied by w_i(s) and the penalty is written to the regulariser key.
            Requires ``advantage_form="stopgrad"`` as in the authors' code.
        in_keys: (Q_i of the taken action, V_i, state, action); defaults above.
        out_keys: (Q_jt, lambda, regulariser).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> mixer = FOPMixer(n_agents=2, state_dim=3, action_dim=4)
        >>> td = TensorDict({
        ...     ("agents", "chosen_action_value"): torch.randn(5, 2, 1),
        ...     ("agents", "state_value"): torch.randn(5, 2, 1),
        ...     "state": torch.randn(5, 3),
        ...     ("agents", "action"): torch.randint(4, (5, 2)),
        ... }, batch_size=[5])
        >>> mixer(td)["q_jt"].shape, bool((td["agents", "lambda"] > 0).all())
        (torch.Size([5, 1]), True)
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        action_dim: int,
        *,
        discrete_actions: bool = True,
        n_heads: int = 4,
        v_hidden: int = 32,
        advantage_form: AdvantageFormName = "stopgrad",
        qatten: QattenWeights | None = None,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
    ) -> None:
        super().__init__(n_agents, state_dim, action_dim, discrete_actions, in_keys, out_keys)
        self.check_options(n_heads=n_heads, v_hidden=v_hidden, advantage_form=advantage_form)
        if qatten is not None and advantage_form != "stopgrad":
            raise ValueError("Qatten weights exist only in the authors' advantage_form='stopgrad'")
        self.advantage_form = advantage_form
        self.qatten = qatten
        joint = state_dim + n_agents * action_dim
        self.head_keys = nn.Linear(state_dim, n_heads)  # |k_h(s)|, one per head
        self.head_agents = nn.Linear(state_dim, n_heads * n_agents)  # a_h(s)
        self.head_actions = nn.Linear(joint, n_heads * n_agents)  # c_h([s, u])
        self.n_heads = n_heads
        self.v_jt = nn.Sequential(
            nn.Linear(state_dim, v_hidden), nn.ReLU(), nn.Linear(v_hidden, 1)
        )

    @staticmethod
    def check_options(*, n_heads: int = 4, v_hidden: int = 32, advantage_form: str = "stopgrad") -> None:
        """Raises ValueError for options the constructor refuses, before it builds anything.

        Examples:
            >>> FOPMixer.check_options(advantage_form="sum")
            Traceback (most recent call last):
            ...
            ValueError: advantage_form must be 'paper' or 'stopgrad', got 'sum'
        """
        if advantage_form not in get_args(AdvantageFormName):
            raise ValueError(f"advantage_form must be 'paper' or 'stopgrad', got {advantage_form!r}")
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        if v_hidden < 1:
            raise ValueError(f"v_hidden must be >= 1, got {v_hidden}")

    def lambda_weights(self, state: Tensor, joint_action: Tensor) -> Tensor:
        """lambda_i(s, u) > 0, shape [*B, N, 1]  (sec. 4.3, QPLEX's weight network)."""
        heads = (self.n_heads, self.n_agents)
        key = self.head_keys(state).abs().unsqueeze(-1) + LAMBDA_EPS  # [*B, H, 1]
        agents = torch.sigmoid(self.head_agents(state)).unflatten(-1, heads)  # [*B, H, N]
        actions = self.head_actions(torch.cat([state, joint_action], -1))
        actions = torch.sigmoid(actions).unflatten(-1, heads)  # [*B, H, N]
        return (key * agents * actions).sum(-2).unsqueeze(-1)  # [*B, N, 1]

    def mix(
        self, q: Tensor, v: Tensor, state: Tensor, action: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Tensor interface: returns (Q_jt [*B, 1], lambda [*B, N, 1], regulariser [*B, 1])."""
        joint_action = self._check(q, v, state, action)
        lam = self.lambda_weights(state, joint_action)
        v_jt = self.v_jt(state)  # [*B, 1]
        regularizer = torch.zeros_like(v_jt)
        if self.advantage_form == "paper":
            # eq. (7) with learned lambda: the loss passes V_i detached, so eq. (9) cannot reach V_i
            q_jt = (lam * (q - v)).sum(-2) + v_jt
        else:
            weight = 1.0
            if self.qatten is not None:
                weight, regularizer = self.qatten(state)  # [*B, N, 1], [*B, 1]
            advantage = (weight * (q - v)).detach()
            q_jt = ((lam - 1.0) * advantage).sum(-2) + (weight * q).sum(-2) + v_jt
        return q_jt, lam, regularizer


class LinearMixer(_MixerBase):
    """DOP's linear decomposition: Q_jt = sum_i k_i(s) Q_i + b(s), k_i(s) >= 0 (Fig. 3 ablation).

    Writes k_i to the lambda key (Q_jt = sum_i k_i [Q_i - V_i] + (b + sum_i k_i V_i), so k_i plays
    lambda_i's role in the individual temperatures). V_i and the action are not used.

    Args:
        n_agents: number of agents N.
        state_dim: size of the global state S.
        action_dim: as in :class:`FOPMixer` (only used to check the action's shape).
        discrete_actions: as in :class:`FOPMixer`.
        hidden: hidden size of the k and b networks.
        in_keys: as in :class:`FOPMixer`.
        out_keys: as in :class:`FOPMixer`.

    Examples:
        >>> import torch
        >>> mixer = LinearMixer(n_agents=2, state_dim=3, action_dim=4)
        >>> q, v, s, u = torch.randn(5, 2, 1), torch.zeros(5, 2, 1), torch.randn(5, 3), torch.randint(4, (5, 2))
        >>> b = mixer.bias(s)
        >>> q_jt, k, _ = mixer.mix(q, v, s, u)
        >>> q_jt2, _, _ = mixer.mix(2 * q, v, s, u)
        >>> torch.allclose(q_jt2 - b, 2 * (q_jt - b), atol=1e-6)  # linear in the Q_i
        True
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        action_dim: int,
        *,
        discrete_actions: bool = True,
        hidden: int = 32,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
    ) -> None:
        super().__init__(n_agents, state_dim, action_dim, discrete_actions, in_keys, out_keys)
        self.weights = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_agents)
        )
        self.bias = nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def mix(
        self, q: Tensor, v: Tensor, state: Tensor, action: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (Q_jt [*B, 1], k [*B, N, 1], zero regulariser [*B, 1])."""
        self._check(q, v, state, action)
        k = self.weights(state).abs().unsqueeze(-1) + LAMBDA_EPS  # [*B, N, 1]
        b = self.bias(state)  # [*B, 1]
        return (k * q).sum(-2) + b, k, torch.zeros_like(b)
