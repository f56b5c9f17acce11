"""DifferentialGameEnv: one-step cooperative games with continuous actions (paper section 5.1).

The payoff is the maximum of a few quadratic bumps over the joint action ``u = (u_1, ..., u_N)``:

    f_k(u) = height_k - scale_k * sum_j ((u_j - centre_kj) / width_k)^2,    payoff(u) = max_k f_k(u)

The default, :data:`MTQ_QUADRATICS`, is the paper's Max of Two Quadratics (MTQ) game: a wide
basin with local optimum 0 at (-5, -5) and a narrow one with the global optimum 10 at (5, 5).
Agents that follow the gradient of a factorised value from the usual initialisation at (0, 0)
tend to fall into the wide basin; FOP reaches (5, 5). As in the paper the reward used for training
is ``reward_scale * payoff`` (0.1 by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torchrl.data import Bounded

from fop_modules.envs.one_step import OneStepGameEnv

__all__ = ["DifferentialGameEnv", "MTQ_QUADRATICS"]

MTQ_QUADRATICS = (
    {"centre": (-5.0, -5.0), "width": 3.0, "scale": 0.8, "height": 0.0},  # f1: wide local optimum
    {"centre": (5.0, 5.0), "width": 1.0, "scale": 1.0, "height": 10.0},  # f2: narrow global one
)
"""The Max of Two Quadratics game (paper section 5.1): r = max(f1, f2) for two agents."""

QUADRATIC_FIELDS = ("centre", "width", "scale", "height")
DEFAULT_ACTION_BOUND = 10.0  # the bound used by the usual MTQ implementation (multi-agent soft Q)
DEFAULT_REWARD_SCALE = 0.1  # the paper scales both agents' reward by 0.1 in training
ACTION_DIM = 1  # one scalar action per agent


class DifferentialGameEnv(OneStepGameEnv):
    """A one-step, single-state cooperative game whose payoff is a max of quadratics.

    Each agent picks one scalar action in ``[-action_bound, action_bound]`` (actions outside are
    clipped to the bound); every agent receives the team reward ``reward_scale * payoff(u)`` and
    the episode ends. ``num_envs`` copies step in one vectorised call.

    Keys (``E = num_envs``, ``N = n_agents``): ``("agents", "observation")`` float
    ``[E, N, 1]`` of ones, ``"state"`` float ``[E, 1]`` of ones, ``("agents", "action")`` float
    ``[E, N, 1]`` (``Bounded(-action_bound, action_bound)``), ``"reward"`` float ``[E, 1]``,
    ``"done"``/``"terminated"``/``"truncated"`` bool ``[E, 1]`` (``True``/``True``/``False``
    after every step). There is no action mask.

    Args:
        quadratics: sequence of mappings with keys ``centre`` (one float per agent), ``width``
            (> 0), ``scale`` (> 0) and ``height``; OmegaConf containers are accepted.
            Defaults to :data:`MTQ_QUADRATICS`.
        action_bound: half-width of every agent's action interval (> 0).
        reward_scale: factor applied to the payoff to give the reward.
        num_envs: number of game copies stepped together (``batch_size == [num_envs]``).
        device: device of specs and tensors; ``None`` keeps torchrl's default (CPU).

    Raises:
        ValueError: for no quadratics, a missing or unknown field, centres of different lengths,
            ``width <= 0``, ``scale <= 0``, non-finite numbers, ``action_bound <= 0`` or
            ``num_envs < 1``.

    Examples:
        >>> import torch
        >>> env = DifferentialGameEnv(num_envs=3)
        >>> env.n_agents, env.global_optimum()
        (2, ((5.0, 5.0), 10.0))
        >>> env.payoff(torch.tensor([[5.0, 5.0], [-5.0, -5.0]]))
        tensor([10.,  0.])
        >>> td = env.reset()
        >>> u = torch.tensor([[5.0, 5.0], [-5.0, -5.0], [20.0, 20.0]])  # [E, N]
        >>> td["agents", "action"] = u.unsqueeze(-1)  # [E, N, 1]
        >>> env.step(td)["next", "reward"].squeeze(-1)  # (20, 20) is clipped to (10, 10)
        tensor([ 1.,  0., -4.])
    """

    def __init__(
        self,
        quadratics: Sequence[Mapping] = MTQ_QUADRATICS,
        action_bound: float = DEFAULT_ACTION_BOUND,
        reward_scale: float = DEFAULT_REWARD_SCALE,
        num_envs: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        centres, widths, scales, heights = _parse_quadratics(quadratics)
        action_bound, reward_scale = float(action_bound), float(reward_scale)
        if not (math.isfinite(action_bound) and action_bound > 0):
            raise ValueError(f"action_bound must be finite and > 0, got {action_bound}.")
        if not math.isfinite(reward_scale):
            raise ValueError(f"reward_scale must be finite, got {reward_scale}.")
        n_agents = centres.shape[-1]
        super().__init__(n_agents=n_agents, num_envs=num_envs, device=device)
        self._centres = centres.to(self.device)  # [K, N]
        self._widths = widths.to(self.device)  # [K]
        self._scales = scales.to(self.device)  # [K]
        self._heights = heights.to(self.device)  # [K]
        self._action_bound = action_bound
        self._reward_scale = reward_scale
        E = self.batch_size[0]
        self._set_agent_action_spec(
            Bounded(
                low=-action_bound,
                high=action_bound,
                shape=(E, n_agents, ACTION_DIM),
                dtype=torch.float32,
                device=self.device,
            )
        )

    @property
    def action_bound(self) -> float:
        """Half-width of every agent's action interval."""
        return self._action_bound

    @property
    def reward_scale(self) -> float:
        """Factor from payoff to reward."""
        return self._reward_scale

    def payoff(self, actions: torch.Tensor) -> torch.Tensor:
        """The unscaled, unclipped payoff ``max_k f_k(u)`` of joint actions.

        Args:
            actions: joint actions ``[..., N]`` (e.g. a grid for plotting the reward surface).

        Returns:
            The payoff, shape ``[...]``.
        """
        if actions.shape[-1] != self.n_agents:
            raise ValueError(
                f"actions must end with n_agents={self.n_agents}, got shape {tuple(actions.shape)}."
            )
        u = actions.to(self._centres).unsqueeze(-2)  # [..., 1, N]
        sq_dist = (((u - self._centres) / self._widths.unsqueeze(-1)) ** 2).sum(-1)  # [..., K]
        values = self._heights - self._scales * sq_dist  # [..., K]: f_k(u)
        return values.max(-1).values  # [...]

    def global_optimum(self) -> tuple[tuple[float, ...], float]:
        """The best quadratic centre (clipped to the bound) and its payoff.

        Assumes the optimum lies at a centre, i.e. no quadratic's peak is dominated by another's.
        """
        candidates = self._centres.clamp(-self._action_bound, self._action_bound)  # [K, N]
        values = self.payoff(candidates)  # [K]
        best = int(values.argmax())
        return tuple(float(x) for x in candidates[best]), float(values[best])

    def _team_reward(self, action: torch.Tensor) -> torch.Tensor:
        u = action.squeeze(-1).clamp(-self._action_bound, self._action_bound)  # [E, N]
        return self._reward_scale * self.payoff(u)  # [E]


def _parse_quadratics(
    quadratics: Sequence[Mapping],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates the quadratics; returns centres ``[K, N]`` and widths, scales, heights ``[K]``."""
    quadratics = list(quadratics)
    if not quadratics:
        raise ValueError("quadratics must hold at least one quadratic, got none.")
    centres, widths, scales, heights = [], [], [], []
    for k, quadratic in enumerate(quadratics):
        if not isinstance(quadratic, Mapping):
            raise ValueError(f"quadratic {k} must be a mapping, got {type(quadratic).__name__}.")
        fields = dict(quadratic)
        missing = [f for f in QUADRATIC_FIELDS if f not in fields]
        if missing:
            raise ValueError(f"quadratic {k} is missing field(s) {missing}.")
        unknown = sorted(set(fields) - set(QUADRATIC_FIELDS))
        if unknown:
            raise ValueError(f"quadratic {k} has unknown field(s) {unknown}.")
        if not isinstance(fields["centre"], Sequence) or isinstance(fields["centre"], str):
            raise ValueError(f"quadratic {k}: centre must be a sequence, got {fields['centre']!r}.")
        centre = [float(c) for c in fields["centre"]]
        if not centre:
            raise ValueError(f"quadratic {k}: centre must hold one value per agent, got none.")
        if centres and len(centre) != len(centres[0]):
            raise ValueError(
                f"quadratic {k}: centre has {len(centre)} values but quadratic 0's has "
                f"{len(centres[0])}; all centres need one value per agent."
            )
        width, scale, height = (float(fields[f]) for f in ("width", "scale", "height"))
        if not all(math.isfinite(x) for x in (*centre, width, scale, height)):
            raise ValueError(f"quadratic {k} has non-finite values: {fields}.")
        if width <= 0:
            raise ValueError(f"quadratic {k}: width must be > 0, got {width}.")
        if scale <= 0:
            raise ValueError(f"quadratic {k}: scale must be > 0, got {scale}.")
        centres.append(centre)
        widths.append(width)
        scales.append(scale)
        heights.append(height)
    return (
        torch.tensor(centres, dtype=torch.float32),  # [K, N]
        torch.tensor(widths, dtype=torch.float32),  # [K]
        torch.tensor(scales, dtype=torch.float32),  # [K]
        torch.tensor(heights, dtype=torch.float32),  # [K]
    )
