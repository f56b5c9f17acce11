"""TanhGaussian: a tanh-squashed Gaussian policy whose log-probability stays exact when it saturates.

An action is u = c + h tanh(x), x ~ N(mu, sigma^2), on the box [low, high] (c its centre, h its
half-width). By the change of variables (SAC, Haarnoja et al. 2018, appendix C, eq. 21)

    log pi(u) = log N(x; mu, sigma^2) - sum_d [log(1 - tanh(x_d)^2) + log h]
    log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x))        (the stable form of the same term)

Both terms need the pre-tanh sample x. TorchRL's ``TanhNormal.log_prob(u)`` recovers it as
atanh of the action, which float32 cannot do once the policy saturates: tanh(x) rounds to 1 for
x above about 9, the inverse is clamped, and log pi is off by tens to thousands of nats (pre-tanh
mean 10, std 0.5: -2.3 instead of +17.9; std 0.05: about -1500). :class:`TanhGaussian` remembers
the pre-tanh value of its latest ``sample()`` / ``rsample()`` and scores that action from it, so
``log_prob(sample())`` is exact, as FOPLoss calls it in eq. (9), (10) and (11). An action it did
not draw (e.g. one read from a replay buffer) is inverted as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import softplus
from torchrl.modules import TanhNormal

__all__ = ["TanhGaussian", "log_one_minus_tanh_squared"]


def log_one_minus_tanh_squared(x: Tensor) -> Tensor:
    """log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), finite for every finite x (SAC, app. C).

    Examples:
        >>> import torch
        >>> log_one_minus_tanh_squared(torch.tensor([0.0, 20.0]))  # the naive form gives -inf at 20
        tensor([  0.0000, -38.6137])
    """
    return 2.0 * (math.log(2.0) - x - softplus(-2.0 * x))


class TanhGaussian(TanhNormal):
    """tanh(N(loc, scale^2)) scaled to [low, high], scored from the pre-tanh sample.

    TorchRL's ``TanhNormal`` (same arguments, sampling and deterministic action) with an exact
    ``log_prob`` for the actions it draws: ``log_prob(value)`` with ``value`` the very tensor
    returned by the latest ``sample()`` or ``rsample()`` uses that draw's pre-tanh value;
    ``sample_and_log_prob`` and ``rsample_and_log_prob`` (what TorchRL's ``SACLoss`` calls)
    score their own draw. Gradients: through the pre-tanh value for ``rsample`` (pathwise), to
    loc and scale only for ``sample`` (score function), as with ``TanhNormal``.

    Args:
        loc: pre-tanh mean mu [*B, d].
        scale: pre-tanh standard deviation sigma [*B, d].
        low: the action box's lower bounds (a tensor or a number).
        high: its upper bounds (a tensor or a number, above ``low``).
        **kwargs: passed on to ``TanhNormal`` (``event_dims``, ``tanh_loc``, ``upscale``, ...).

    Examples:
        >>> import torch
        >>> from torchrl.modules import TanhNormal
        >>> _ = torch.manual_seed(0)
        >>> loc, scale = torch.full((1000, 1), 10.0), torch.full((1000, 1), 0.05)
        >>> dist = TanhGaussian(loc, scale, low=-2.0, high=2.0)
        >>> action = dist.sample()  # saturated: within float32 rounding of the box's edge
        >>> bool(((2.0 - action) < 1e-5).all())
        True
        >>> log_prob = dist.log_prob(action)  # exact: E[log pi] = 20.19 - log 2 = 19.50
        >>> log_prob.shape, round(log_prob.mean().item(), 1)
        (torch.Size([1000]), 19.5)
        >>> bool((TanhNormal(loc, scale, low=-2.0, high=2.0).log_prob(action) < -1000).all())
        True
    """

    def __init__(self, loc: Tensor, scale: Tensor, low: Tensor | float = -1.0, high: Tensor | float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(loc, scale, low=low, high=high, **kwargs)
        self._last_draw: tuple[Tensor, Tensor] | None = None  # (action, its pre-tanh value)

    def _squash(self, x: Tensor) -> Tensor:
        action = self.transforms[0](x)
        self._last_draw = (action, x)
        return action

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self._squash(self.base_dist.sample(sample_shape))

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        return self._squash(self.base_dist.rsample(sample_shape))

    def log_prob_pre_tanh(self, x: Tensor) -> Tensor:
        """log pi(u) of the action u = c + h tanh(x), computed from its pre-tanh value x (module
        docstring's change of variables); shape [*B] (the action dimension summed)."""
        half_width = ((self.high - self.low) / 2).to(x)
        log_det = log_one_minus_tanh_squared(x) + half_width.log()  # log |d u_d / d x_d|
        if self._event_dims:  # the action dimensions, summed as base_dist.log_prob sums them
            log_det = log_det.flatten(-self._event_dims).sum(-1)
        return self.base_dist.log_prob(x) - log_det

    def log_prob(self, value: Tensor) -> Tensor:
        """log pi(value): exact for the latest draw of this distribution, else from atanh(value)
        (clamped, so inexact where the action is within float rounding of the box's edge)."""
        if self._last_draw is not None and value is self._last_draw[0]:
            x = self._last_draw[1]
        else:
            x = self.transforms[0].inv(value)
        return self.log_prob_pre_tanh(x)

    def sample_and_log_prob(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
        action = self.sample(sample_shape)
        return action, self.log_prob(action)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
        action = self.rsample(sample_shape)
        return action, self.log_prob(action)
