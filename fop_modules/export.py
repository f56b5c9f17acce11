"""One agent's greedy policy as a plain module of tensors, for deployment as ONNX or TorchScript.

Centralised training, decentralised execution: after training each agent acts on its own
observation only. The team policies here share their parameters across agents and tell agents
apart by a one-hot agent id appended to the input (:mod:`fop_modules.networks`), so one
:class:`AgentPolicy` serves every agent, given its index. Its inputs and outputs are tensors
with a leading batch dimension ``B`` (robots, or games, acting at once), named:

=================  ======================================  =========================================
actor              inputs                                  outputs
=================  ======================================  =========================================
discrete MLP       observation [B, F] float32,             action [B] int64 (argmax over available
(FOP, MASAC)       agent [B] int64, action_mask [B, A]     actions), probs [B, A] (0 where masked)
                   bool (if the actor is masked)
GRU (FOP)          the same, plus last_action [B, A]       action, probs, hidden_out [B, H]
                   float32 (one-hot; zeros at an
                   episode's first step) and hidden
                   [B, H] float32 (zeros at the first step)
Q network          as discrete MLP                         action [B] int64, action_value [B, A]
(QMIX, VDN)
continuous (FOP,   observation, agent                      action [B, d] (the tanh-Gaussian's
MASAC)                                                     deterministic action), loc, scale [B, d]
                                                           (the Gaussian's parameters before tanh)
deterministic      observation, agent                      action [B, d]
(MADDPG)
=================  ======================================  =========================================

``action`` is what the TorchRL policy plays under ``ExplorationType.DETERMINISTIC``.
:func:`export_actor` writes the module as ONNX (``torch.onnx.export``; ``pip install -e
".[export]"``) or TorchScript (``torch.jit.trace``), with a dynamic batch dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchrl.modules import MaskedCategorical, NormalParamExtractor, QValueModule, TanhModule, TanhNormal

from fop_modules.networks import AgentMLP
from fop_modules.optional import require
from fop_modules.recurrent import EMBED_KEY, find_encoder

__all__ = ["AgentPolicy", "export_actor", "FORMATS"]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18


def _one(policy: nn.Module, kind: type) -> nn.Module | None:
    return next((m for m in policy.modules() if isinstance(m, kind)), None)


class AgentPolicy(nn.Module):
    """Agent ``i``'s greedy step of a team policy built by :mod:`fop_modules.networks`,
    :mod:`fop_modules.recurrent` or :mod:`fop_modules.baselines`, on tensors (no TensorDict).

    Shares the team policy's parameters (copy it first to keep them apart). See the module
    docstring for the inputs and outputs of each kind of actor.

    Args:
        policy: the team policy (the collection policy; exploration modules are ignored).

    Raises:
        ValueError: for a policy whose networks are none of these.

    Examples:
        >>> import torch
        >>> from fop_modules import networks
        >>> agent = AgentPolicy(networks.discrete_actor(n_agents=3, obs_dim=4, n_actions=5))
        >>> agent.kind, agent.input_names, agent.output_names
        ('discrete', ['observation', 'agent', 'action_mask'], ['action', 'probs'])
        >>> mask = torch.ones(2, 5, dtype=torch.bool)
        >>> action, probs = agent(torch.randn(2, 4), torch.tensor([0, 2]), mask)
        >>> action.shape, probs.shape
        (torch.Size([2]), torch.Size([2, 5]))
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.encoder = find_encoder(policy)
        if self.encoder is not None:  # GRUEncoder -> Linear head -> masked softmax
            self.kind = "recurrent"
            self.head = next(m.module for m in policy.modules()
                             if getattr(m, "in_keys", None) == [EMBED_KEY] and isinstance(getattr(m, "module", None), nn.Linear))
            self.n_agents, self.obs_dim, self.n_actions = self.encoder.n_agents, self.encoder.obs_dim, self.head.out_features
            self.masked = True
            self.agent_id = self.encoder.agent_id
            self.input_names = ["observation", "agent", "action_mask", "last_action", "hidden"]
            self.output_names = ["action", "probs", "hidden_out"]
            return
        mlp = _one(policy, AgentMLP)
        if mlp is None:
            raise ValueError(f"{type(policy).__name__}: no AgentMLP or GRUEncoder in this policy; "
                             "AgentPolicy exports the actors of fop_modules.networks, recurrent and baselines")
        self.mlp, self.n_agents, self.obs_dim, self.agent_id = mlp, mlp.n_agents, mlp.in_features, mlp.agent_id
        if _one(policy, QValueModule) is not None:
            self.kind, outputs = "qvalue", ["action", "action_value"]
            self.masked = _one(policy, QValueModule).action_mask_key is not None
        elif _one(policy, TanhModule) is not None:
            tanh = _one(policy, TanhModule)
            self.kind, outputs, self.masked = "deterministic", ["action"], False
            key = "_".join(tanh.out_keys[0]) if isinstance(tanh.out_keys[0], tuple) else tanh.out_keys[0]
            self.register_buffer("low", getattr(tanh, f"{key}_low").detach().clone())  # [N, d] or []
            self.register_buffer("high", getattr(tanh, f"{key}_high").detach().clone())
        elif _one(policy, NormalParamExtractor) is not None:
            dist = next(m for m in policy.modules() if getattr(m, "distribution_class", None) is TanhNormal)
            self.kind, outputs, self.masked = "continuous", ["action", "loc", "scale"], False
            self.params = _one(policy, NormalParamExtractor)
            kwargs = dist.distribution_kwargs
            if kwargs.get("tanh_loc", False):
                raise ValueError("AgentPolicy exports TanhNormal actors without tanh_loc (as networks.continuous_actor builds them)")
            self.register_buffer("low", torch.as_tensor(kwargs.get("low", -1.0), dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(kwargs.get("high", 1.0), dtype=torch.float32))
        else:
            dist = next(m for m in policy.modules() if hasattr(m, "distribution_class"))
            self.kind, outputs = "discrete", ["action", "probs"]
            self.masked = dist.distribution_class is MaskedCategorical
            # MASAC's actor gives masked actions a finite logit (baselines.MASK_LOGIT): play as it does
            self.neg_inf = float((dist.distribution_kwargs or {}).get("neg_inf", float("-inf")))
        self.n_actions = None if self.kind in ("continuous", "deterministic") else mlp.mlp[-1].out_features
        self.input_names = ["observation", "agent"] + ["action_mask"] * self.masked
        self.output_names = outputs

    def _with_id(self, x: Tensor, agent: Tensor) -> Tensor:
        """[B, F] -> [B, F + N]: the agent's one-hot id appended, as the team networks do."""
        if not self.agent_id:
            return x
        return torch.cat([x, nn.functional.one_hot(agent, self.n_agents).to(x.dtype)], -1)

    neg_inf: float = float("-inf")  # the score of an unavailable action

    def _greedy(self, scores: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Argmax over the available actions [B] and the scores with unavailable ones at ``neg_inf``."""
        if mask is not None:
            scores = scores.masked_fill(~mask, self.neg_inf)
        return scores.argmax(-1), scores

    def forward(self, observation: Tensor, agent: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        mask = rest[0] if self.masked else None
        x = observation.to(torch.float32)
        if self.kind == "recurrent":
            last_action, hidden = rest[1], rest[2]
            x = torch.cat([x, last_action.to(x.dtype)], -1) if self.encoder.n_actions else x
            features = torch.relu(self.encoder.fc(self._with_id(x, agent)))  # [B, H]
            out, _ = self.encoder.gru(features.unsqueeze(1), hidden.unsqueeze(0))  # one GRU step
            hidden_out = out.squeeze(1)
            action, logits = self._greedy(self.head(hidden_out), mask)
            return action, torch.softmax(logits, -1), hidden_out
        y = self.mlp.mlp(self._with_id(x, agent))
        if self.kind == "discrete":
            action, logits = self._greedy(y, mask)
            return action, torch.softmax(logits, -1)
        if self.kind == "qvalue":
            action, _ = self._greedy(y, mask)
            return action, y
        if self.kind == "deterministic":  # TorchRL's TanhModule
            return (self._onto_box(y, agent),)
        loc, scale = self.params(y)  # the TanhNormal's deterministic action: its mean through tanh
        return self._onto_box(loc, agent), loc, scale

    def _onto_box(self, y: Tensor, agent: Tensor) -> Tensor:
        """tanh(y) mapped affinely onto [low, high] (the agent's row of per-agent bounds [N, d]),
        as TanhNormal and TanhModule do."""
        low, high = (self.low[agent], self.high[agent]) if self.low.dim() == 2 else (self.low, self.high)
        return (high + low) / 2 + (high - low) / 2 * torch.tanh(y)

    def example_inputs(self, batch: int = 2) -> tuple[Tensor, ...]:
        """Inputs of the right shapes and types (zeros; every action available)."""
        inputs = [torch.zeros(batch, self.obs_dim), torch.zeros(batch, dtype=torch.int64)]
        if self.masked:
            inputs.append(torch.ones(batch, self.n_actions, dtype=torch.bool))
        if self.kind == "recurrent":
            inputs += [torch.zeros(batch, self.n_actions), torch.zeros(batch, self.encoder.hidden)]
        return tuple(inputs)


def export_actor(agent: AgentPolicy, path: str | Path, fmt: Literal["onnx", "torchscript"] = "onnx") -> Path:
    """Writes ``agent`` to ``path`` as ONNX or TorchScript, batch dimension dynamic.

    Examples:
        >>> import tempfile
        >>> from fop_modules import networks
        >>> agent = AgentPolicy(networks.discrete_actor(n_agents=2, obs_dim=3, n_actions=4))
        >>> path = export_actor(agent, Path(tempfile.mkdtemp()) / "actor.pt", "torchscript")
        >>> scripted = torch.jit.load(path)
        >>> [t.shape for t in scripted(*agent.example_inputs(batch=5))]
        [torch.Size([5]), torch.Size([5, 4])]
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    agent = agent.eval()
    example = agent.example_inputs()
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(agent, example, check_trace=False)
            traced.save(str(path))
            return path
        for module in ("onnx", "onnxscript"):
            require(module, needed_for="exporting to ONNX", extra="export")
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            agent, example, str(path), input_names=agent.input_names, output_names=agent.output_names,
            dynamic_shapes=[{0: batch}, {0: batch}] + [tuple({0: batch} for _ in example[2:])] * (len(example) > 2), opset_version=ONNX_OPSET, dynamo=True,
            external_data=False,
        )
    return path
