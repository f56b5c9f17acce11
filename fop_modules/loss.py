"""FOPLoss: the four objectives of FOP (paper sec. 4, Algorithm 1) as a TorchRL LossModule.

=================  ================================================  ============================
output             objective                                          trains
=================  ================================================  ============================
``loss_qvalue``    eq. (9) joint soft TD on Q_jt (one-step/TD(lam))   Q_i critics, mixer(s)
``loss_value``     eq. (10) individual V_i (paper form only)           V_i networks
``loss_actor``     eq. (11) individual policies                        pi_i
``loss_alpha``     SAC's dual update of the team temperature           log_alpha (when learned)
=================  ================================================  ============================

plus detached metrics ``alpha``, ``alpha_i`` [N], ``entropy`` (team entropy H(pi_jt) =
sum_i H(pi_i)), ``q_jt`` and ``td_error``. Each objective only sends gradients to the parameters
in its row: eq. (9) does not reach V_i or pi_i.
"""

from __future__ import annotations

import abc
import contextlib
import math
import weakref
from copy import deepcopy
from dataclasses import dataclass
from functools import partial
from typing import Callable, ClassVar, Literal, Sequence, get_args

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, TensorDictSequential
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.modules.distributions.utils import rsample_and_log_prob, sample_and_log_prob
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators, dispatch_value_estimator, distance_loss

from fop_modules.mixer import FOPMixer, LinearMixer
from fop_modules.recurrent import GRUEncoder, find_encoder
from fop_modules.slices import Slices, real_steps

__all__ = ["FOPLoss", "DiscreteFOPLoss", "ContinuousFOPLoss", "trainable", "IndividualTemperatureName",
           "EntropyReductionName", "LossFunctionName"]

IndividualTemperatureName = Literal["shared", "paper"]  # alpha_i = alpha (authors) | the paper's formula
EntropyReductionName = Literal["sum", "mean"]  # log pi_jt in eq. (9): over agents (paper) | mean (authors)
LossFunctionName = Literal["l2", "l1", "smooth_l1"]  # eq. (9) and (10)'s distance (TorchRL's distance_loss)

ALPHA_I_RATIO_RANGE = (0.1, 10.0)  # clamp of alpha_i / alpha from the paper's formula (noisy ratio)
_TWIN_EMBEDDINGS = ("_fop", "critic_embeddings")  # a GRU critic's embeddings per twin [M, K, N, H]


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy with newly initialised parameters (the second twin critic / mixer)."""
    copy = deepcopy(module)
    for sub in copy.modules():
        if hasattr(sub, "reset_parameters") and sub is not copy:
            sub.reset_parameters()
    return copy


def _twins(module: nn.Module | Sequence[nn.Module], n: int) -> list[nn.Module]:
    modules = list(module) if isinstance(module, (list, tuple)) else [module]
    if len(modules) == 1:
        modules += [_fresh_copy(modules[0]) for _ in range(n - 1)]
    if len(modules) != n:
        raise ValueError(f"expected 1 or {n} modules for {n} twin critics, got {len(modules)}")
    return modules


def trainable(*groups: TensorDictBase) -> list[nn.Parameter]:
    """The parameters of a loss's functional parameter groups (``loss.actor_network_params``,
    ...) that require gradients, in order: what one objective's optimiser steps."""
    return [p for g in groups for p in g.values(True, True) if p.requires_grad]


def _check_shape(tensor: Tensor, key: NestedKey, pattern: str, expected: list[int], what: str) -> None:
    """Raises ValueError naming ``key`` unless ``tensor`` has shape ``expected`` (no data read)."""
    if list(tensor.shape) != expected:
        raise ValueError(
            f"FOPLoss: {key!r} ({what}) must have shape {pattern} = {expected}, got {list(tensor.shape)}"
        )


def _nonfinite_message(key: NestedKey, tensor: Tensor) -> str | None:
    """The error for NaN or inf values in ``tensor`` (None if it has none)."""
    count = (~torch.isfinite(tensor)).sum().item()
    if not count:
        return None
    return (f"FOPLoss: {key!r} holds {count} NaN or infinite value(s): the losses and gradients "
            "would be NaN (loss.check_values=False skips this check)")


# module -> (leaf keys, [(the owner's _parameters or _buffers dict, name)]): where `_swapped`
# assigns each leaf of a parameter TensorDict (found once per module; weak: no module kept alive)
_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _slots(module: nn.Module, keys: list) -> list[tuple[dict, str]] | None:
    """The (table, name) of each leaf key of ``module``, or None if one is neither a registered
    parameter nor a buffer."""
    cached = _SLOTS.get(module)
    if cached is not None and cached[0] == keys:
        return cached[1]
    slots = []
    for key in keys:
        path, name = (key[:-1], key[-1]) if isinstance(key, tuple) else ((), key)
        owner = module.get_submodule(".".join(path))
        table = owner._parameters if name in owner._parameters else owner._buffers
        if name not in table:
            return None
        slots.append((table, name))
    _SLOTS[module] = (keys, slots)
    return slots


@contextlib.contextmanager
def _swapped(module: nn.Module, params: TensorDictBase):
    """``params.to_module(module)`` for the loss's own network calls, by direct assignment.

    A hot-path helper (benchmarks/update_cost.py): ``to_module`` costs about 0.1 ms per call
    in TensorDict bookkeeping on CPU, and an update makes 10-30 such calls on small networks.
    Each leaf of ``params`` replaces the parameter or buffer of the same name for the block, as
    given: a Parameter, a twin's view of the stacked parameters (gradients reach the stack) or a
    detached tensor (a constant: nothing wraps it in a Parameter that requires grad). Falls back
    to ``to_module`` when a leaf is neither a registered parameter nor a buffer of ``module``.
    """
    items = list(params.items(True, True))
    slots = _slots(module, [key for key, _ in items])
    if slots is None:
        with params.to_module(module):
            yield
        return
    previous = [table[name] for table, name in slots]
    for (table, name), (_, value) in zip(slots, items):
        table[name] = value
    try:
        yield
    finally:
        for (table, name), old in zip(slots, previous):
            table[name] = old


def _module_outputs(net: TensorDictModule, tensordict: TensorDictBase,
                    replace: dict[NestedKey, Tensor] | None = None) -> dict[NestedKey, Tensor]:
    """A plain ``TensorDictModule``'s outputs ``{out key: tensor}``, its ``nn.Module`` called on
    the input tensors (those in ``replace`` taking precedence) directly: no TensorDict is
    selected, built or written (hot path, see :func:`_swapped`)."""
    inputs = [replace[k] if replace and k in replace else tensordict.get(k) for k in net.in_keys]
    out = net.module(*inputs)
    return dict(zip(net.out_keys, out if isinstance(out, tuple) else (out,)))


def _module_output(net: nn.Module, tensordict: TensorDictBase, key: NestedKey,
                   replace: dict[NestedKey, Tensor] | None = None) -> Tensor | None:
    """``net(tensordict)[key]`` (inputs in ``replace`` taking precedence): a plain
    ``TensorDictModule`` by :func:`_module_outputs`, other modules on a selected copy."""
    replace = {unravel_key(name): value for name, value in (replace or {}).items()}
    if type(net) is not TensorDictModule:
        td = tensordict.select(*net.in_keys, strict=False)
        for name, value in replace.items():
            td.set(name, value)
        return net(td).get(key, None)
    return _module_outputs(net, tensordict, replace).get(unravel_key(key))


def _after_encoder(module: nn.Module, encoder: GRUEncoder | None) -> nn.Module | None:
    """What runs after a GRU ``encoder`` in ``module`` (``TensorDictSequential(encoder, head)``, as
    :mod:`fop_modules.recurrent` builds its networks): the head; ``module`` itself without an
    encoder; None for any other layout."""
    if encoder is None:
        return module
    stages = getattr(module, "module", None)
    if isinstance(module, TensorDictSequential) and len(stages) == 2 and stages[0] is encoder:
        return stages[1]
    return None


def _policy_stages(actor: nn.Module, encoder: GRUEncoder | None) -> tuple[TensorDictModule, nn.Module] | None:
    """(parameter module, probabilistic module) of an actor built as ``networks`` and
    ``recurrent`` build them (a ``ProbabilisticActor`` of a plain ``TensorDictModule``, or of a GRU
    encoder and one, and the distribution); the parameter module is the part after the encoder,
    which reads the embeddings :meth:`FOPLoss.unroll` computes. None for any other layout."""
    stages = getattr(actor, "module", None)
    if not (isinstance(actor, ProbabilisticTensorDictSequential) and isinstance(stages, nn.ModuleList)
            and len(stages) == 2 and hasattr(stages[1], "dist_keys")):
        return None
    head = _after_encoder(stages[0], encoder)
    return (head, stages[1]) if type(head) is TensorDictModule else None


class FOPLoss(LossModule):
    """FOP's joint TD, V, policy and dual-temperature objectives.

    The objectives (:meth:`qvalue_loss` eq. 9, :meth:`value_loss` eq. 10, :meth:`actor_loss`
    eq. 11, :meth:`alpha_loss`) read flat transitions. :meth:`unroll` is the step before them:
    it checks a replayed batch and turns ``[B, T]`` slices into the rows of their real steps,
    with a GRU actor's embeddings (:mod:`fop_modules.slices`); :meth:`forward` runs it once,
    then every objective.

    Args:
        actor_network: per-agent policy with ``get_dist`` (TorchRL ``ProbabilisticActor``):
            a (masked) categorical over actions for discrete spaces, tanh-Gaussian for continuous.
            A continuous action's log pi is scored at the pre-tanh draw that made it (TorchRL's
            ``sample_and_log_prob``), exact when the tanh saturates, where ``log_prob(action)``
            is not (a distribution without ``(r)sample_and_log_prob`` is scored by ``log_prob``).
        qvalue_network: per-agent critic. Discrete: reads observations, writes Q_i(o_i, .) for all
            actions at ``action_value`` [*B, N, A]. Continuous: reads observations and actions,
            writes Q_i(o_i, u_i) at ``state_action_value`` [*B, N, 1]. One module (twins are fresh
            copies) or a list of ``num_qvalue_nets`` modules.
        mixer: a :class:`~fop_modules.FOPMixer` or :class:`~fop_modules.LinearMixer` (or a list,
            one per twin critic).
        action_space: ``"discrete"`` (builds a :class:`DiscreteFOPLoss`) or ``"continuous"``
            (a :class:`ContinuousFOPLoss`); those classes may be built directly, without it.
        value_network: V_i(o_i) network trained by eq. (10) (the paper's form). If ``None``
            (discrete only), V_i is the analytic soft value alpha * logsumexp(Q_i / alpha) over the
            available actions, as in the authors' code.
        num_qvalue_nets: 1 (default), or 2 for clipped double Q (min of the two target Q_jt;
            the authors' SMAC setting, ``fop_modules.presets.SMAC``). On one-step games
            twins can settle in different basins and their minimum misleads the actor.
        alpha_init: initial team temperature alpha (also its value while scheduled).
        learn_alpha: learn alpha by SAC's dual objective ``loss_alpha`` instead of scheduling it
            (scheduled: assign ``loss.alpha = value`` each step).
        target_entropy: target of the team entropy H(pi_jt) for the dual update. ``"auto"``:
            discrete, ``target_entropy_weight * sum_i log |A_i|`` over each sample's available
            actions A_i (``action_mask``; all ``num_actions`` without a mask), so the target
            stays reachable when masks leave an agent few actions; continuous,
            ``-N * action_dim``. A number: that fixed target.
        target_entropy_weight: see ``target_entropy``.
        num_actions: actions per agent (default: the mixer's ``action_dim``).
        individual_temperature: ``"shared"`` (alpha_i = alpha, the authors' code) or ``"paper"``
            (alpha_i = alpha E_pi_i[Q_i - V_i] / E_pi_jt[lambda_i (Q_i - V_i)], batch averages,
            ratio clamped to ALPHA_I_RATIO_RANGE; needs ``value_network``).
        entropy_reduction: how log pi_jt(u' | tau') enters the eq. (9) target: ``"sum"`` over
            agents (paper) or ``"mean"`` (authors' code).
        loss_function: distance for eq. (9) and (10): ``"l2"`` (authors), ``"l1"``, ``"smooth_l1"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        KeyError: when the batch lacks a key the loss reads (named, with its expected shape).
        ValueError: when the action, action mask, state, team reward/done/terminated of the
            batch, or a critic's or V network's output, has the wrong shape (the key and expected
            shape are named, e.g. ``("agents", "state_action_value")`` ``[*B, n_agents, 1]``); when
            the batch is empty; and, while ``check_values`` is True (the default), when a float
            entry it reads holds NaN or inf, or a discrete action index is outside [0, A).
        TypeError: when done/terminated flags or an action mask are not bool, or discrete actions
            are not integer indices.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fop_modules import FOPLoss, FOPMixer, networks
        >>> n, obs, A, B = 2, 3, 4, 8
        >>> loss = FOPLoss(networks.discrete_actor(n, obs, A), networks.discrete_critic(n, obs, A),
        ...                FOPMixer(n, state_dim=5, action_dim=A), action_space="discrete")
        >>> step = {("agents", "observation"): torch.randn(B, n, obs), "state": torch.randn(B, 5),
        ...         ("agents", "action_mask"): torch.ones(B, n, A, dtype=torch.bool)}
        >>> td = TensorDict({**step, ("agents", "action"): torch.randint(A, (B, n)),
        ...     "next": {**step, "reward": torch.randn(B, 1), "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)}}, [B])
        >>> out = loss(td)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_qvalue']
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``loss.set_keys(name=key)``).

        Attributes:
            action: the agents' actions (indices [*B, N] or vectors [*B, N, d]).
            action_mask: available actions [*B, N, A] (optional; discrete only).
            action_value: discrete critic output Q_i(o_i, .) [*B, N, A].
            state_action_value: continuous critic output Q_i(o_i, u_i) [*B, N, 1].
            state_value: V_i network output [*B, N, 1].
            state: global state s [*B, S] read by the mixer.
            value: where the next-state soft joint value is written for the value estimator.
            reward, done, terminated: team reward and flags [*B, 1] under ``"next"``.
        """

        action: NestedKey = ("agents", "action")
        action_mask: NestedKey = ("agents", "action_mask")
        action_value: NestedKey = ("agents", "action_value")
        state_action_value: NestedKey = ("agents", "state_action_value")
        state_value: NestedKey = ("agents", "state_value")
        state: NestedKey = "state"
        value: NestedKey = "soft_joint_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    _schedulable_buffers = frozenset({"alpha"})

    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    mixer: FOPMixer
    mixer_params: TensorDictParams
    target_mixer_params: TensorDictParams
    value_network: TensorDictModule | None
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    action_space: ClassVar[str]  # "discrete" or "continuous": the subclass's
    discrete: ClassVar[bool]

    def __new__(cls, *args, **kwargs):
        """``FOPLoss(..., action_space=...)`` builds :class:`DiscreteFOPLoss` or
        :class:`ContinuousFOPLoss` (the way TorchRL splits ``DiscreteSACLoss`` from ``SACLoss``,
        behind one constructor)."""
        if cls is FOPLoss:
            space = kwargs.get("action_space")
            classes = {"discrete": DiscreteFOPLoss, "continuous": ContinuousFOPLoss}
            if space not in classes:
                raise ValueError(f"action_space must be 'discrete' or 'continuous', got {space!r}")
            cls = classes[space]
        return super().__new__(cls)

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | Sequence[TensorDictModule],
        mixer: FOPMixer | LinearMixer | Sequence[FOPMixer | LinearMixer],
        *,
        action_space: Literal["discrete", "continuous"] | None = None,
        value_network: TensorDictModule | None = None,
        num_qvalue_nets: int = 1,
        alpha_init: float = 1.0,
        learn_alpha: bool = False,
        target_entropy: float | Literal["auto"] = "auto",
        target_entropy_weight: float = 0.98,
        num_actions: int | None = None,
        individual_temperature: IndividualTemperatureName = "shared",
        entropy_reduction: EntropyReductionName = "sum",
        loss_function: LossFunctionName = "l2",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        action_space = self.action_space if action_space is None else action_space
        if action_space != self.action_space:
            raise ValueError(f"{type(self).__name__} is FOP for {self.action_space} actions, got action_space={action_space!r}")
        if value_network is None and action_space == "continuous":
            raise ValueError(
                "continuous actions need a value_network for V_i (eq. 10): the analytic soft "
                "value alpha * logsumexp(Q_i / alpha) exists only for discrete actions"
            )
        self.check_options(num_qvalue_nets=num_qvalue_nets, value_network=value_network is not None,
                           individual_temperature=individual_temperature, entropy_reduction=entropy_reduction,
                           learn_alpha=learn_alpha, alpha_init=alpha_init, target_entropy=target_entropy,
                           loss_function=loss_function)

        self.num_qvalue_nets = num_qvalue_nets
        self.individual_temperature = individual_temperature
        self.entropy_reduction = entropy_reduction
        self.loss_function = loss_function
        self.reduction = reduction
        self.learn_alpha = learn_alpha

        mixers = _twins(mixer, num_qvalue_nets)
        self.n_agents = mixers[0].n_agents
        self.convert_to_functional(actor_network, "actor_network")
        # A GRU actor (fop_modules.recurrent) is unrolled over [B, T] slices by `unroll`; the
        # objectives run the rest of the actor on the embeddings it writes. (Lists: not submodules.)
        self._encoders = [encoder] if (encoder := find_encoder(self.actor_network)) else []
        self._actor_stages = _policy_stages(self.actor_network, encoder)
        if encoder is not None and self._actor_stages is None:
            raise ValueError(
                "FOPLoss reads a recurrent actor as ProbabilisticActor(TensorDictSequential(GRUEncoder, "
                "head), distribution), as fop_modules.recurrent.recurrent_discrete_actor builds it"
            )
        # Twins are stacked along a leading dim of their params (one module: no stacking, since
        # tensordict's stacking of a single module gives non-leaf tensors); see `_twin`.
        twin_dim = num_qvalue_nets if num_qvalue_nets > 1 else None
        critics = _twins(qvalue_network, num_qvalue_nets)
        self.convert_to_functional(
            critics if twin_dim else critics[0],
            "qvalue_network",
            expand_dim=twin_dim,
            create_target_params=True,
        )
        self.convert_to_functional(
            mixers if twin_dim else mixers[0], "mixer", expand_dim=twin_dim, create_target_params=True
        )
        # The mixer's own value check (finite state, action indices in range: one synchronisation
        # per call, 2-6 calls per update) repeats `_check_input`'s scan of the batch, whose state,
        # next state and actions are what the loss mixes (sampled actions are valid): off here.
        self.mixer.check_values = False
        # A GRU critic (the re-release's) is unrolled over the [B, T] slices by each objective, with
        # the parameters that objective uses (`_critic_input`); its head then reads the rows.
        self._critic_encoders = [enc] if (enc := find_encoder(self.qvalue_network)) else []
        self._critic_head = [_after_encoder(self.qvalue_network, enc)] if enc is not None else []
        if enc is not None and type(self._critic_head[0]) is not TensorDictModule:
            raise ValueError(
                "FOPLoss reads a recurrent critic as TensorDictSequential(GRUEncoder, head), as "
                "fop_modules.recurrent.recurrent_discrete_critic builds it"
            )
        if value_network is not None:
            self.convert_to_functional(value_network, "value_network", create_target_params=True)
        else:
            self.value_network = None

        if learn_alpha:
            self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha_init)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha_init)))
        num_actions = mixers[0].action_dim if num_actions is None else num_actions
        self.target_entropy_weight: float | None = None  # set where "auto" follows the action masks
        if target_entropy == "auto":
            target_entropy = self._auto_target_entropy(target_entropy_weight, num_actions)
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy)))

    @staticmethod
    def check_options(
        *,
        num_qvalue_nets: int = 2,
        value_network: bool = False,
        individual_temperature: str = "shared",
        entropy_reduction: str = "sum",
        learn_alpha: bool = False,
        alpha_init: float = 1.0,
        target_entropy: float | str = "auto",
        loss_function: str = "l2",
    ) -> None:
        """Raises ValueError for options the constructor refuses, before any network is built
        (``value_network``: whether one will be given); the constructor runs it on its own.

        Examples:
            >>> FOPLoss.check_options(num_qvalue_nets=3)
            Traceback (most recent call last):
            ...
            ValueError: num_qvalue_nets must be 1 or 2, got 3
        """
        if num_qvalue_nets not in (1, 2):
            raise ValueError(f"num_qvalue_nets must be 1 or 2, got {num_qvalue_nets}")
        if individual_temperature not in get_args(IndividualTemperatureName):
            raise ValueError(
                f"individual_temperature must be 'shared' or 'paper', got {individual_temperature!r}"
            )
        if individual_temperature == "paper" and not value_network:
            raise ValueError(
                "individual_temperature='paper' needs a value_network: with the analytic V_i the "
                "alpha_i formula refers to itself"
            )
        if entropy_reduction not in get_args(EntropyReductionName):
            raise ValueError(f"entropy_reduction must be 'sum' or 'mean', got {entropy_reduction!r}")
        if loss_function not in get_args(LossFunctionName):
            raise ValueError(f"loss_function must be one of {list(get_args(LossFunctionName))}, got {loss_function!r}")
        if not 0 <= alpha_init < math.inf:
            raise ValueError(f"alpha_init must be finite and >= 0, got {alpha_init}")
        if learn_alpha and alpha_init <= 0:
            raise ValueError(
                f"alpha_init must be > 0 with learn_alpha (alpha is learned in log space), got {alpha_init}"
            )
        if target_entropy != "auto" and (isinstance(target_entropy, bool) or not isinstance(target_entropy, (int, float))
                                         or not math.isfinite(target_entropy)):
            raise ValueError(f"target_entropy must be a finite number or 'auto', got {target_entropy!r}")

    @property
    def in_keys(self) -> list[NestedKey]:
        """Every key the loss reads (TorchRL convention; also what ``repr`` shows): the networks'
        inputs and the state at the root and under ``"next"``, the taken action at the root only
        (next actions are sampled from the policy), the action mask at both (discrete; read when
        present) and the team reward, done and terminated under ``"next"``."""
        keys = {*self.actor_network.in_keys, *self.qvalue_network.in_keys, self.tensor_keys.state}
        if self.value_network is not None:
            keys.update(self.value_network.in_keys)
        keys.update(self._optional_in_keys())
        action = unravel_key(self.tensor_keys.action)  # a continuous critic reads it too
        keys = {unravel_key(key) for key in keys} - {action}
        keys.update([unravel_key(("next", key)) for key in keys])
        keys.add(action)
        keys.update(unravel_key(("next", getattr(self.tensor_keys, name))) for name in ("reward", "done", "terminated"))
        return sorted(keys, key=str)

    @property
    def out_keys(self) -> list[str]:
        keys = ["loss_qvalue"] + ["loss_value"] * (self.value_network is not None) + ["loss_actor"]
        return keys + ["loss_alpha"] * self.learn_alpha + ["alpha", "alpha_i", "entropy", "q_jt", "td_error"]

    # ------------------------------------------------------------------ optimisation
    def param_groups(
        self,
        lr_qvalue: float = 3e-4,
        lr_mixer: float | None = 3e-2,
        lr_value: float = 1e-3,
        lr_actor: float = 3e-3,
        lr_alpha: float = 1e-3,
    ) -> dict[str, list[dict]]:
        """The trainable parameters of each objective, in Algorithm 1's order, as torch
        optimiser parameter groups: ``{loss key: [{"params": [...], "lr": ...}, ...]}``.

        ============== =================================================== =======================
        key            parameters                                          rate
        ============== =================================================== =======================
        loss_qvalue    critics Q_i (``qvalue_network_params``, every twin)  ``lr_qvalue``
                       and mixers (``mixer_params``: lambda net, V_jt)     ``lr_mixer`` (own group)
        loss_value     V_i networks (``value_network_params``; paper form) ``lr_value``
        loss_actor     policies pi_i (``actor_network_params``)            ``lr_actor``
        loss_alpha     ``log_alpha`` (``learn_alpha=True``)                ``lr_alpha``
        ============== =================================================== =======================

        Target parameters are never trained (``SoftUpdate`` / ``HardUpdate`` copy them). The
        default rates are the didactic games' (``configs/config.yaml``): a slow critic and a fast
        mixer keep the stop-gradient fit of eq. (7) stable as alpha falls (docs/results.md);
        ``lr_mixer=None`` puts the mixer in the critics' group.

        Examples:
            >>> from fop_modules import FOPLoss, FOPMixer, networks
            >>> loss = FOPLoss(networks.discrete_actor(2, 3, 4), networks.discrete_critic(2, 3, 4),
            ...                FOPMixer(2, state_dim=5, action_dim=4), action_space="discrete")
            >>> groups = loss.param_groups()
            >>> list(groups), [g["lr"] for g in groups["loss_qvalue"]]
            (['loss_qvalue', 'loss_actor'], [0.0003, 0.03])
        """
        critics, mixer = trainable(self.qvalue_network_params), trainable(self.mixer_params)
        groups = {"loss_qvalue": [{"params": critics, "lr": lr_qvalue}, {"params": mixer, "lr": lr_mixer}]
                  if lr_mixer is not None else [{"params": critics + mixer, "lr": lr_qvalue}]}
        if self.value_network is not None:
            groups["loss_value"] = [{"params": trainable(self.value_network_params), "lr": lr_value}]
        groups["loss_actor"] = [{"params": trainable(self.actor_network_params), "lr": lr_actor}]
        if self.learn_alpha:
            groups["loss_alpha"] = [{"params": [self.log_alpha], "lr": lr_alpha}]
        return groups

    def make_optimizers(
        self, optimizer: type[torch.optim.Optimizer] = torch.optim.Adam, *, eps: float = 1e-5, **rates: float | None
    ) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per objective (``{loss key: optimizer}``, Algorithm 1's order) over
        :meth:`param_groups` (``rates``: its ``lr_*`` arguments). Step each after its own loss,
        in this order; with separate optimisers a gradient-norm clip applies per objective.

        Examples:
            >>> from fop_modules import FOPLoss, FOPMixer, networks
            >>> loss = FOPLoss(networks.discrete_actor(2, 3, 4), networks.discrete_critic(2, 3, 4),
            ...                FOPMixer(2, state_dim=5, action_dim=4), action_space="discrete")
            >>> {key: type(opt).__name__ for key, opt in loss.make_optimizers(lr_actor=1e-3).items()}
            {'loss_qvalue': 'Adam', 'loss_actor': 'Adam'}
        """
        return {key: optimizer(groups, eps=eps) for key, groups in self.param_groups(**rates).items()}

    # ------------------------------------------------------------------ temperatures
    @property
    def alpha_value(self) -> Tensor:
        """The current team temperature alpha (detached scalar)."""
        return self.log_alpha.detach().exp() if self.learn_alpha else self.alpha

    @torch.no_grad()
    def individual_alphas(self, tensordict: TensorDictBase, policy=None) -> Tensor:
        """alpha_i per agent, shape [N, 1] (detached).

        ``policy``: the policy at ``tensordict`` as the objective computing alpha_i has it (what
        ``_policy`` returns), so that both share one forward of the actor (same values, same
        random draws in the same order); None: computed here.
        """
        alpha = self.alpha_value
        shared = alpha.expand(self.n_agents, 1)
        if self.individual_temperature == "shared" or alpha == 0:
            return shared
        # Paper: alpha_i = alpha * E_{u_i~pi_i}[Q_i - V_i] / E_{u~pi_jt}[lambda_i (Q_i - V_i)]
        v = self._value_net(tensordict, self.value_network_params)  # [*B, N, 1]
        policy = self._policy(tensordict) if policy is None else policy
        numerator, advantage, action = self._advantages(tensordict, policy, v)
        _, lam, _ = self._mix(self.mixer_params, 0, advantage + v, v, tensordict, action)
        batch_dims = tuple(range(numerator.dim() - 2))
        ratio = numerator.mean(batch_dims) / (lam * advantage).mean(batch_dims)  # [N, 1]
        ratio = torch.nan_to_num(ratio, nan=1.0).clamp(*ALPHA_I_RATIO_RANGE)
        return alpha * ratio

    # ------------------------------------------------------------------ input checks
    _values_checked = True

    @property
    def check_values(self) -> bool:
        """Whether the loss also reads the batch's values: floats finite, action indices in range
        (True; costs one device synchronisation and a sum over each float entry per :meth:`unroll`,
        once per update when the objectives share one; ``loss.check_values = False`` skips it).
        The batch is checked once, so the mixer's own check is off inside the loss."""
        return self._values_checked

    @check_values.setter
    def check_values(self, on: bool) -> None:
        self._values_checked = bool(on)

    def _check_input(self, tensordict: TensorDictBase) -> None:
        """Names a missing key, a wrong shape or dtype, or (with ``check_values``) a NaN/inf value
        or an out-of-range action index of the batch, before any network runs."""
        keys, batch = self.tensor_keys, list(tensordict.batch_size)
        if tensordict.batch_size.numel() == 0:
            raise ValueError(f"FOPLoss: the batch is empty (batch_size {batch}): give it at least one sample")
        action = self._action_spec(batch)
        state = ("[*B, state_dim]", [*batch, self.mixer.state_dim], "global state for the mixer")
        team = ("[*B, 1]", [*batch, 1])
        expected = {
            keys.action: action,
            keys.state: state,
            ("next", keys.state): state,
            ("next", keys.reward): (*team, "team reward, one per sample"),
            ("next", keys.done): (*team, "team done flag"),
            ("next", keys.terminated): (*team, "team terminated flag"),
        }
        for key, (pattern, shape, what) in expected.items():
            tensor = tensordict.get(key, None)
            if tensor is None:
                raise KeyError(
                    f"FOPLoss: the input has no {key!r} ({what}, shape {pattern}); rename the "
                    f"loss's keys with loss.set_keys(...) if the data has it under another name"
                )
            if key == keys.action and self._accepts_action_shape(list(tensor.shape), shape):
                continue
            _check_shape(tensor, key, pattern, shape, what)
        self._check_dtypes(tensordict)
        if self.check_values:
            self._check_values(tensordict)

    def _check_dtypes(self, tensordict: TensorDictBase) -> None:
        """Done flags are bool; then the actions' own rules (:meth:`_check_action_dtypes`)."""
        keys = self.tensor_keys
        for key in (("next", keys.done), ("next", keys.terminated)):
            if tensordict.get(key).dtype != torch.bool:
                raise TypeError(
                    f"FOPLoss: {key!r} must be a bool tensor (TorchRL's done flags), got "
                    f"{tensordict.get(key).dtype}: convert it with .bool()"
                )
        self._check_action_dtypes(tensordict)

    def _check_values(self, tensordict: TensorDictBase) -> None:
        """Every floating-point entry the loss reads is finite and discrete actions lie in
        [0, n_actions). One device synchronisation reads all flags; a float entry is scanned
        element by element only when its sum is not finite (NaN and inf propagate through a sum;
        an overflow of the sum alone raises nothing)."""
        checks = self._action_value_checks(tensordict)  # (suspect flag, message or None)
        for key in self.in_keys:
            tensor = tensordict.get(key, None)
            if isinstance(tensor, Tensor) and tensor.is_floating_point():
                checks.append((~tensor.sum().isfinite(), partial(_nonfinite_message, key, tensor)))
        suspects = torch.stack([flag.cpu() for flag, _ in checks]).tolist() if checks else []
        for suspect, (_, message) in zip(suspects, checks):
            if suspect and (text := message()) is not None:
                raise ValueError(text)

    # ------------------------------------------------------------------ network calls
    def unroll(self, tensordict: TensorDictBase | Slices) -> Slices:
        """The step before the objectives: a replayed batch as the flat transitions they read.

        - ``[*B]`` transitions (feed-forward networks): ``Slices(rows=tensordict)``.
        - ``[B, T]`` slices of trajectories (time last, as TorchRL's ``SliceSampler`` gives them;
          padding after each slice's real steps is marked by ``("collector", "mask")``): the M real
          steps as flat rows (:mod:`fop_modules.slices`). A GRU actor is unrolled once over the
          slices, from the hidden state stored at each slice's first step (zeroed where
          ``"is_init"``), and its embeddings h_t, h_{t+1} are written to the rows, with gradients
          when they are enabled: eq. (11) backpropagates through them. The ``[B, T]`` batch stays
          in the result for TD(lambda) and a GRU critic.

        The batch is checked first (see Raises in the class docstring). Run this once per update
        and pass the result to every objective, as :meth:`forward` and the Lightning module do:
        it stays valid while the actor's parameters do not change, so step the actor's optimiser
        last. Each objective also takes the batch itself, and unrolls it then.

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> from fop_modules import FOPLoss, FOPMixer
            >>> from fop_modules.recurrent import recurrent_discrete_actor
            >>> from fop_modules.networks import discrete_critic
            >>> n, obs, A, B, T = 2, 3, 4, 5, 6
            >>> loss = FOPLoss(recurrent_discrete_actor(n, obs, A, hidden=8), discrete_critic(n, obs, A),
            ...                FOPMixer(n, state_dim=5, action_dim=A), action_space="discrete")
            >>> step = {("agents", "observation"): torch.randn(B, T, n, obs), "state": torch.randn(B, T, 5),
            ...         ("agents", "last_action"): torch.zeros(B, T, n, A),
            ...         ("agents", "action_mask"): torch.ones(B, T, n, A, dtype=torch.bool)}
            >>> batch = TensorDict({**step, "is_init": torch.zeros(B, T, 1, dtype=torch.bool),
            ...     "rnn_hidden": torch.zeros(B, T, n, 8), ("agents", "action"): torch.randint(A, (B, T, n)),
            ...     ("collector", "mask"): torch.arange(T).expand(B, T) < 4,  # 4 real steps per slice
            ...     "next": {**step, "reward": torch.randn(B, T, 1), "done": torch.zeros(B, T, 1, dtype=torch.bool),
            ...              "terminated": torch.zeros(B, T, 1, dtype=torch.bool)}}, [B, T])
            >>> slices = loss.unroll(batch)
            >>> slices.rows.batch_size, slices.rows["next", "agents", "embed"].shape
            (torch.Size([20]), torch.Size([20, 2, 8]))
            >>> loss_qvalue, meta = loss.qvalue_loss(slices)
        """
        if isinstance(tensordict, Slices):
            return tensordict
        self._check_input(tensordict)
        if tensordict.batch_dims != 2:
            if self._encoders or self._critic_encoders:
                raise ValueError(
                    "recurrent networks need [B, T] batches of trajectory slices (time last), got batch "
                    f"{list(tensordict.batch_size)}: replay sequences (make_replay_buffer's sequence_length)"
                )
            return Slices(tensordict)
        valid = real_steps(self, tensordict)
        rows = tensordict.select(*self._row_keys(), strict=False)[valid]
        for encoder in self._encoders:
            with self.actor_network_params.to_module(self.actor_network):
                root, after = encoder.unroll_steps(tensordict, valid)  # h_t, h_{t+1} at the real steps
            rows.set(encoder.embed_key, root)
            rows.set(("next", *encoder.embed_key), after)
        return Slices(rows, tensordict, valid)

    def _slices(self, tensordict: TensorDictBase | Slices, grad: bool) -> Slices:
        """:meth:`unroll` for an objective given the batch itself (``grad``: whether it needs the
        actor's gradients); a :class:`Slices` as it is."""
        if isinstance(tensordict, Slices):
            return tensordict
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.unroll(tensordict)

    def _row_keys(self) -> list[NestedKey]:
        """What the rows keep of a slice batch: every key the loss reads but those only a GRU
        encoder reads (its observation, hidden state, episode start and last action), which the
        embeddings stand for."""
        def both(keys):  # root and "next"
            return {unravel_key(k) for key in keys for k in (key, ("next", key))}

        encoder_only = both(k for encoder in (*self._encoders, *self._critic_encoders) for k in encoder.in_keys)
        readers = [] if self._critic_encoders else list(self.qvalue_network.in_keys)
        if self.value_network is not None:
            readers += self.value_network.in_keys
        return sorted({unravel_key(key) for key in self.in_keys} - (encoder_only - both(readers)), key=str)

    def _critic_input(self, slices: Slices, half: Literal["root", "next"], params: TensorDictBase,
                      grad: bool = False) -> TensorDictBase:
        """The rows (``half="root"``) or their ``"next"`` steps, as the critic with ``params`` reads
        them. A GRU critic is unrolled here over the slices once per twin, with gradients if
        ``grad``, and each twin's embeddings of that half are added to the rows (stacked on dim 1
        at ``_TWIN_EMBEDDINGS``); an MLP critic reads the rows as they are."""
        rows = slices.rows if half == "root" else slices.rows.get("next")
        if not self._critic_encoders:
            return rows
        encoder, embeddings = self._critic_encoders[0], []
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for k in range(self.num_qvalue_nets):
                with self._twin(params, k).to_module(self.qvalue_network):
                    root, after = encoder.unroll_steps(slices.sequence, slices.valid)
                embeddings.append(root if half == "root" else after)
        rows = rows.clone(False)
        rows.set(_TWIN_EMBEDDINGS, torch.stack(embeddings, 1))  # [M, K, N, H]
        return rows

    def _policy(self, tensordict: TensorDictBase):
        """pi_i at the rows, as the action space reads it (:meth:`_policy_from`)."""
        stages = self._actor_stages
        if stages is None:  # another layout (never a GRU actor): TensorDict's path
            with self.actor_network_params.to_module(self.actor_network):
                return self._policy_from(self.actor_network.get_dist(tensordict), tensordict)
        head, dist_module = stages  # hot path: the parameter module on tensors, then the distribution
        with _swapped(self.actor_network, self.actor_network_params):
            outputs = _module_outputs(head, tensordict)
        # The distribution as the actor builds it (a categorical's normalised logits round
        # differently from the raw ones: reading those would change the results).
        inputs = tensordict.select(*(k for k in dist_module.in_keys if k not in outputs), strict=False)
        inputs.update(outputs)
        return self._policy_from(dist_module.get_dist(inputs), tensordict)

    def _critic(self, tensordict: TensorDictBase, params: TensorDictBase, k: int, action: Tensor | None = None) -> Tensor:
        """Twin k's critic: discrete Q_i(o_i, .) [*B, N, A]; continuous Q_i(o_i, u_i) [*B, N, 1]
        (``_critic_key``, :meth:`_critic_shape`).

        Detached ``params`` stay constants (:func:`_swapped` puts them in as they are; ``to_module``
        would wrap them in leaf Parameters that require grad, and a backward through Q_i would
        compute critic gradients no one reads)."""
        key = self._critic_key
        replace = {} if action is None else {self.tensor_keys.action: action}
        if self._critic_encoders:  # the head on this twin's embeddings (`_critic_input`)
            embeddings = tensordict.get(_TWIN_EMBEDDINGS, None)
            if embeddings is None:
                raise RuntimeError(
                    "FOPLoss: a recurrent critic reads the embeddings its objectives compute from "
                    "[B, T] slices; call the objectives (qvalue_loss, value_loss, actor_loss, forward)"
                )
            head = self._critic_head[0]
            replace[head.in_keys[0]] = embeddings[:, k]
            with _swapped(self.qvalue_network, self._twin(params, k)):
                q = _module_output(head, tensordict, key, replace)
        else:
            with _swapped(self.qvalue_network, self._twin(params, k)):
                q = _module_output(self.qvalue_network, tensordict, key, replace)
        if q is None:
            raise KeyError(f"FOPLoss: the critic wrote no {key!r}; loss.set_keys(...) names its output")
        _check_shape(q, key, *self._critic_shape([*tensordict.batch_size]))
        return q

    def _value_net(self, tensordict: TensorDictBase, params: TensorDictBase) -> Tensor:
        with _swapped(self.value_network, params):
            v = _module_output(self.value_network, tensordict, self.tensor_keys.state_value)
        if v is None:
            raise KeyError(f"FOPLoss: the value network wrote no {self.tensor_keys.state_value!r}")
        _check_shape(v, self.tensor_keys.state_value, "[*B, n_agents, 1]",
                     [*tensordict.batch_size, self.n_agents, 1], "the V_i network's output")
        return v

    def _twin(self, params: TensorDictBase, k: int) -> TensorDictBase:
        """Twin k's parameters out of the (possibly stacked) critic or mixer parameters."""
        return params[k] if self.num_qvalue_nets > 1 else params

    def _mix(self, params: TensorDictBase, k: int, q: Tensor, v: Tensor, td: TensorDictBase, action):
        state = td.get(self.tensor_keys.state, None)
        if state is None:
            raise KeyError(
                f"FOPLoss: the input has no global state {self.tensor_keys.state!r} for the mixer "
                "(set it with loss.set_keys(state=...))"
            )
        with _swapped(self.mixer, self._twin(params, k)):
            return self.mixer.mix(q, v, state, action)

    def _soft_value(self, q_all: Tensor, alpha_i: Tensor, mask: Tensor | None) -> Tensor:
        """Analytic soft V_i = alpha_i logsumexp(Q_i / alpha_i) over available actions [*B, N, 1]."""
        if mask is not None:
            q_all = q_all.masked_fill(~mask, -torch.inf)
        hard = q_all.amax(-1, keepdim=True)  # the alpha -> 0 limit (greedy FOP)
        safe = alpha_i.clamp_min(torch.finfo(q_all.dtype).tiny)
        soft = safe * torch.logsumexp(q_all / safe, -1, keepdim=True)
        return torch.where(alpha_i > 0, soft, hard)

    def _mixer_alphas(self, tensordict: TensorDictBase, policy=None) -> Tensor | None:
        """alpha_i for the mixer's analytic V_i (:meth:`individual_alphas`); None where V_i comes
        from the V networks, which do not read it (no forward passes, no random draws for it)."""
        return self.individual_alphas(tensordict, policy) if self.value_network is None else None

    def _state_value(self, td, q_all: Tensor | None, alpha_i: Tensor | None, params) -> Tensor:
        """V_i for the mixer, detached: analytic from Q_i, or the V network (eq. 9 never reaches it)."""
        if self.value_network is None:
            return self._soft_value(q_all.detach(), alpha_i, td.get(self.tensor_keys.action_mask, None))
        return self._value_net(td, params).detach()

    def _min_critic(self, td: TensorDictBase, params: TensorDictBase, action: Tensor | None = None):
        """min over twins of the critic (all actions if discrete, else at ``action``)."""
        return torch.stack([self._critic(td, params, k, action) for k in range(self.num_qvalue_nets)]).amin(0)

    def _twin_q_jt(self, td: TensorDictBase, action: Tensor, k: int, alpha_i: Tensor | None, target: bool):
        """Twin k's Q_i, V_i and eq. (7) mix at ``action``, with current or target parameters.

        Returns (Q_i [*B, N, A] or [*B, N, 1], V_i, Q_jt [*B, 1], lambda [*B, N, 1], regulariser).
        """
        critic = self.target_qvalue_network_params if target else self.qvalue_network_params
        mixer = self.target_mixer_params if target else self.mixer_params
        value = None
        if self.value_network is not None:
            value = self.target_value_network_params if target else self.value_network_params
        q_all, q = self._critic_at(td, critic, k, action)
        v = self._state_value(td, q_all, alpha_i, value)
        return (q_all, v, *self._mix(mixer, k, q, v, td, action))

    def _joint_log_prob(self, log_pi: Tensor) -> Tensor:
        """log pi_jt [*B, 1] from log pi_i [*B, N, 1]: sum (paper) or mean (authors' code)."""
        return log_pi.sum(-2) if self.entropy_reduction == "sum" else log_pi.mean(-2)

    @torch.no_grad()
    def joint_q(self, tensordict: TensorDictBase | Slices) -> TensorDict:
        """Inspection: twin 0's Q_i (all actions if discrete), V_i, lambda_i and Q_jt at the actions
        in ``tensordict``, with the current parameters. Returns a TensorDict with keys
        ``q_i`` ([*B, N, A] discrete or [*B, N, 1]), ``v_i``, ``lambda_i`` ([*B, N, 1]), ``q_jt`` ([*B, 1])
        (``[M]``: the real steps, for slices)."""
        if not isinstance(tensordict, Slices) and not self._critic_encoders:
            tensordict = Slices(tensordict)  # the policy is not read: the steps and actions will do
        rows = self._critic_input(self._slices(tensordict, grad=False), "root", self.qvalue_network_params)
        action = rows.get(self.tensor_keys.action)
        alpha_i = self._mixer_alphas(rows)
        q_all, v, q_jt, lam, _ = self._twin_q_jt(rows, action, 0, alpha_i, target=False)
        return TensorDict({"q_i": q_all, "v_i": v, "lambda_i": lam, "q_jt": q_jt}, batch_size=rows.batch_size)

    # ------------------------------------------------------------------ objectives
    @torch.no_grad()
    def _td_target(self, tensordict: TensorDictBase | Slices) -> Tensor:
        """y = r + gamma (min_k Q_jt^target(tau', u') - alpha log pi_jt(u' | tau')), u' ~ pi_jt (eq. 9).

        The networks run on the rows' next steps; the value estimator on the ``[B, T]`` slices
        when there are any (TD(lambda) needs the time dimension). Returns y at the rows [M, 1].
        """
        slices = self._slices(tensordict, grad=False)
        next_td = self._critic_input(slices, "next", self.target_qvalue_network_params)
        alpha = self.alpha_value
        policy = self._policy(next_td)  # one forward for alpha_i and u' (no draw in between)
        alpha_i = self._mixer_alphas(next_td, policy)
        next_action, log_pi = self._draw(policy)  # u' ~ pi_jt(. | tau'), log pi_i(u'_i) [*B, N, 1]
        q_jts = [
            self._twin_q_jt(next_td, next_action, k, alpha_i, target=True)[2]
            for k in range(self.num_qvalue_nets)
        ]
        next_value = torch.stack(q_jts).amin(0) - alpha * self._joint_log_prob(log_pi)  # [*B, 1]
        if slices.sequence is None:
            td = slices.rows.clone(False)
        else:  # back to [B, T], zero on padding (no target there is read)
            valid = slices.valid
            next_value = next_value.new_zeros(*valid.shape, 1).masked_scatter_(valid.unsqueeze(-1), next_value)
            td = slices.sequence.clone(False)
            # SliceSampler marks every padded step done, so TorchRL's vectorised TD(lambda) splits
            # the padding into one-step trajectories (slow); each slice's last real step is done
            # already, so clearing the flags on padding changes no target at a real step.
            for key in (self.tensor_keys.done, self.tensor_keys.terminated):
                td.set(("next", key), td.get(("next", key)) & valid.unsqueeze(-1))
        td.set(("next", self.tensor_keys.value), next_value)
        target = self.value_estimator.value_estimate(td)  # [*B, 1]
        return target if slices.sequence is None else target[slices.valid]

    def qvalue_loss(self, tensordict: TensorDictBase | Slices) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. (9): joint soft TD error of every twin's Q_jt; trains critics and mixers only.

        Args:
            tensordict: a batch of transitions or slices, or its :meth:`unroll`.

        Returns:
            ``(loss, meta)``: the scalar loss (summed over twins) and, detached, ``meta["q_jt"]``
            (twin 0's Q_jt at the batch's actions, [M, 1]) and ``meta["td_error"]``
            (|Q_jt - y|, [M, 1]); M is the batch, or its real steps for a padded [B, T] batch.
        """
        slices = self._slices(tensordict, grad=False)  # the policy is only sampled here
        target = self._td_target(slices)
        rows = self._critic_input(slices, "root", self.qvalue_network_params, grad=True)
        action = rows.get(self.tensor_keys.action)
        alpha_i = self._mixer_alphas(rows)
        loss, q_jts = 0.0, []
        for k in range(self.num_qvalue_nets):
            _, _, q_jt, _, regularizer = self._twin_q_jt(rows, action, k, alpha_i, target=False)
            error = distance_loss(q_jt, target, loss_function=self.loss_function) + regularizer
            loss = loss + self._reduce_loss(error, rows)
            q_jts.append(q_jt.detach())
        q_jt = q_jts[0]
        return loss, {"q_jt": q_jt, "td_error": (q_jt - target).abs()}

    def value_loss(self, tensordict: TensorDictBase | Slices) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. (10): V_i regresses E_{u_i~pi_i}[Q_i - alpha_i log pi_i]; trains V_i only.

        Args:
            tensordict: a batch of transitions or slices, or its :meth:`unroll`.

        Returns:
            ``(loss, meta)``: the scalar loss and ``meta["state_value"]``, V_i [M, N, 1], detached.
        """
        if self.value_network is None:
            raise RuntimeError("value_loss needs a value_network (this loss uses the analytic V_i)")
        with torch.no_grad():
            rows = self._critic_input(self._slices(tensordict, grad=False), "root", self.qvalue_network_params)
            policy = self._policy(rows)  # one forward for alpha_i and the target
            alpha_i = self.individual_alphas(rows, policy)
            target = self._soft_value_target(rows, policy, alpha_i)  # E_pi_i[Q_i - alpha_i log pi_i]
        v = self._value_net(rows, self.value_network_params)  # [*B, N, 1]
        loss = distance_loss(v, target, loss_function=self.loss_function)
        return self._reduce_loss(loss, rows), {"state_value": v.detach()}

    def actor_loss(self, tensordict: TensorDictBase | Slices) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. (11): E_{u_i~pi_i}[alpha_i log pi_i(u_i) - Q_i(u_i)] with min over twins; trains pi_i.

        Args:
            tensordict: a batch of transitions or slices, or its :meth:`unroll` (with gradients:
                a GRU actor's unroll is part of what this objective trains).

        Returns:
            ``(loss, meta)``: the scalar loss and, detached, per sample (the real steps of a padded
            [B, T] batch), ``meta["log_prob_jt"]``: E log pi_jt = -H(pi_jt) [M, 1] (exact over
            discrete actions, one sample for continuous ones), and ``meta["target_entropy"]``: the
            dual update's target [M, 1]. ``alpha_loss(meta["log_prob_jt"], meta["target_entropy"])``
            reads both.
        """
        slices = self._slices(tensordict, grad=True)
        rows = self._critic_input(slices, "root", self.qvalue_network_params)  # no grad: Q_i is a constant of eq. (11)
        policy = self._policy(rows)  # one forward (with gradients) for alpha_i and eq. (11)
        alpha_i = self.individual_alphas(rows, policy)
        # gradients reach pi_i only: the critics' parameters enter detached
        loss, log_pi = self._actor_terms(rows, policy, alpha_i, self.qvalue_network_params.detach())
        log_pi_jt = log_pi.sum(-2)  # E log pi_jt = -H(pi_jt) [*B, 1]
        target = self._target_entropy(rows)  # [*B, 1]
        return self._reduce_loss(loss, rows), {"log_prob_jt": log_pi_jt, "target_entropy": target}

    def _target_entropy(self, tensordict: TensorDictBase) -> Tensor:
        """The dual update's target entropy per sample [*B, 1]: discrete ``"auto"`` with a mask,
        target_entropy_weight * sum_i log |A_i| over each agent's available actions A_i."""
        auto = self.target_entropy_weight is not None
        mask = tensordict.get(self.tensor_keys.action_mask, None) if auto else None
        if mask is None:
            return self.target_entropy.expand(*tensordict.batch_size, 1)
        available = mask.sum(-1, keepdim=True).to(self.target_entropy.dtype)  # |A_i| [*B, N, 1]
        return self.target_entropy_weight * available.log().sum(-2)

    def alpha_loss(self, log_prob_jt: Tensor, target_entropy: Tensor | None = None) -> Tensor:
        """Dual update of alpha toward the target entropy for H(pi_jt) (as SAC); trains log_alpha.

        Args:
            log_prob_jt: E log pi_jt per sample (``actor_loss``'s ``meta["log_prob_jt"]``, detached).
            target_entropy: the target per sample (``meta["target_entropy"]``, which follows the
                action masks); ``None``: the loss's fixed ``target_entropy``.
        """
        if not self.learn_alpha:
            raise RuntimeError("alpha_loss needs learn_alpha=True (alpha is scheduled here)")
        target = self.target_entropy if target_entropy is None else target_entropy
        return self._reduce_loss(-self.log_alpha * (log_prob_jt + target).detach())

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        slices = self.unroll(tensordict)  # once for every objective: nothing is stepped in between
        loss_qvalue, q_meta = self.qvalue_loss(slices)
        out = {"loss_qvalue": loss_qvalue}
        if self.value_network is not None:
            out["loss_value"] = self.value_loss(slices)[0]
        out["loss_actor"], actor_meta = self.actor_loss(slices)
        if self.learn_alpha:
            out["loss_alpha"] = self.alpha_loss(actor_meta["log_prob_jt"], actor_meta["target_entropy"])
        rows = slices.rows
        if self.individual_temperature == "paper":  # alpha_i reads the critic
            rows = self._critic_input(slices, "root", self.qvalue_network_params)
        out.update(
            alpha=self.alpha_value.clone(),
            alpha_i=self.individual_alphas(rows).squeeze(-1),
            entropy=-actor_meta["log_prob_jt"].mean(),
            q_jt=q_meta["q_jt"].mean(),
            td_error=q_meta["td_error"].mean(),
        )
        return TensorDict(out, batch_size=[])

    # ------------------------------------------------------------------ what the action space decides
    # The objectives above are one skeleton for both action spaces; these are the steps where
    # discrete and continuous FOP differ (DiscreteFOPLoss, ContinuousFOPLoss).
    @abc.abstractmethod
    def _auto_target_entropy(self, weight: float, num_actions: int) -> float:
        """``target_entropy="auto"``: the fixed target (and, discrete, the mask-following one's weight)."""

    @abc.abstractmethod
    def _optional_in_keys(self) -> list[NestedKey]:
        """Keys the loss reads when present (the action mask)."""

    @abc.abstractmethod
    def _action_spec(self, batch: list[int]) -> tuple[str, list[int], str]:
        """(shape pattern, shape, description) of the batch's actions."""

    def _accepts_action_shape(self, shape: list[int], expected: list[int]) -> bool:
        """Whether actions of ``shape`` are read although it is not ``expected``."""
        return False

    def _check_action_dtypes(self, tensordict: TensorDictBase) -> None:
        """Raises TypeError for actions (or masks) of the wrong dtype."""

    def _action_value_checks(self, tensordict: TensorDictBase) -> list[tuple[Tensor, Callable[[], str | None]]]:
        """(suspect flag, message) pairs for the actions' values (:meth:`_check_values`)."""
        return []

    @abc.abstractmethod
    def _policy_from(self, dist, tensordict: TensorDictBase):
        """pi_i from the actor's distribution, in the form the objectives below read."""

    @property
    @abc.abstractmethod
    def _critic_key(self) -> NestedKey:
        """Where the critic writes its output."""

    @abc.abstractmethod
    def _critic_shape(self, batch: list[int]) -> tuple[str, list[int], str]:
        """(shape pattern, shape, description) of the critic's output."""

    @abc.abstractmethod
    def _critic_at(self, td: TensorDictBase, params: TensorDictBase, k: int, action: Tensor) -> tuple[Tensor, Tensor]:
        """(the critic's output, Q_i(tau_i, u_i) [*B, N, 1]) of twin k at ``action``."""

    @abc.abstractmethod
    def _draw(self, policy) -> tuple[Tensor, Tensor]:
        """u ~ pi_jt and log pi_i(u_i) [*B, N, 1], without gradients (eq. 9's target)."""

    @abc.abstractmethod
    def _soft_value_target(self, rows: TensorDictBase, policy, alpha_i: Tensor) -> Tensor:
        """Eq. (10)'s target E_{u_i~pi_i}[min_k Q_i^k(tau_i, u_i) - alpha_i log pi_i(u_i)] [*B, N, 1]."""

    @abc.abstractmethod
    def _actor_terms(self, rows: TensorDictBase, policy, alpha_i: Tensor, params: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Eq. (11) per agent, E_{u_i~pi_i}[alpha_i log pi_i(u_i) - min_k Q_i^k(tau_i, u_i)] [*B, N, 1]
        (gradients to pi_i only: ``params`` are the critics', detached), and E log pi_i [*B, N, 1],
        detached."""

    @abc.abstractmethod
    def _advantages(self, td: TensorDictBase, policy, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For the paper's alpha_i: (E_{u_i~pi_i}[Q_i - V_i], Q_i(u_i) - V_i at u ~ pi_jt, that u)."""

    # ------------------------------------------------------------------ value estimator
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams):
        """TD0 (one-step, default), TD1 or TDLambda (``lmbda=``) targets; ``gamma=`` goes here.

        TD(lambda) needs batches with a time dimension last ([*B, T]), as TorchRL's estimators do.
        """
        value_type, hp = self._prepare_value_estimator_kwargs(value_type, **hyperparams)
        if value_type is None:
            return self
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value": self.tensor_keys.value,
                "value_target": "value_target",
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hp,
        )
        return self


class DiscreteFOPLoss(FOPLoss):
    """FOP for discrete actions: ``FOPLoss(..., action_space="discrete")`` builds it (arguments:
    :class:`FOPLoss`'s). The critic writes Q_i(tau_i, .) for every action, so every expectation
    over pi_i is exact: eq. (10)'s target and eq. (11) sum over the available actions, weighted
    by pi_i, and V_i may be the analytic soft value (``value_network=None``). Unavailable actions
    (``action_mask``) have probability 0, and the automatic entropy target follows the masks."""

    action_space = "discrete"
    discrete = True

    def _auto_target_entropy(self, weight: float, num_actions: int) -> float:
        self.target_entropy_weight = weight  # with a mask: weight * sum_i log |A_i| per sample
        return weight * self.n_agents * math.log(num_actions)  # all actions available

    def _optional_in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.action_mask]

    def _action_spec(self, batch: list[int]) -> tuple[str, list[int], str]:
        return "[*B, n_agents]", [*batch, self.n_agents], "action indices"

    def _accepts_action_shape(self, shape: list[int], expected: list[int]) -> bool:
        return shape == [*expected, 1]  # indices with a trailing singleton, as TorchRL's specs may give them

    def _check_action_dtypes(self, tensordict: TensorDictBase) -> None:
        """Actions are integer indices; masks bool [*B, N, A]."""
        keys = self.tensor_keys
        dtype = tensordict.get(keys.action).dtype
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise TypeError(
                f"FOPLoss: {keys.action!r} must hold integer action indices (int64), got {dtype}; "
                "float indices are not rounded: convert them with .long() if they are whole numbers"
            )
        expected = [*tensordict.batch_size, self.n_agents, self.mixer.action_dim]
        for key in (keys.action_mask, ("next", keys.action_mask)):
            mask = tensordict.get(key, None)
            if mask is None:
                continue
            _check_shape(mask, key, "[*B, n_agents, n_actions]", expected, "available actions")
            if mask.dtype != torch.bool:
                raise TypeError(f"FOPLoss: {key!r} (available actions) must be a bool tensor, got {mask.dtype}")

    def _action_value_checks(self, tensordict: TensorDictBase) -> list[tuple[Tensor, Callable[[], str | None]]]:
        key, n_actions = self.tensor_keys.action, self.mixer.action_dim
        index = tensordict.get(key)
        return [(((index < 0) | (index >= n_actions)).any(), lambda: (
            f"FOPLoss: {key!r} holds action indices from {index.min().item()} to "
            f"{index.max().item()}; with {n_actions} actions they must lie in [0, {n_actions - 1}]"
        ))]

    def _policy_from(self, dist, tensordict: TensorDictBase) -> tuple[Tensor, Tensor]:
        """(probs, log_probs) [*B, N, A], both 0 at unavailable actions."""
        logits = dist.logits
        mask = tensordict.get(self.tensor_keys.action_mask, None)
        if mask is None:
            log_probs = torch.log_softmax(logits, -1)
            return log_probs.exp(), log_probs
        if mask.shape != logits.shape:
            raise ValueError(
                f"{self.tensor_keys.action_mask!r} must have the policy's shape "
                f"{list(logits.shape)}, got {list(mask.shape)}"
            )
        if not mask.any(-1).all():
            raise ValueError(
                f"every agent needs at least one available action in {self.tensor_keys.action_mask!r}"
            )
        # Mask before the softmax (the authors renormalise after it); where() keeps gradients
        # and products finite at unavailable actions, even with one available action.
        log_probs = torch.log_softmax(logits.masked_fill(~mask, -torch.inf), -1)
        return log_probs.exp(), torch.where(mask, log_probs, torch.zeros_like(log_probs))

    @property
    def _critic_key(self) -> NestedKey:
        return self.tensor_keys.action_value

    def _critic_shape(self, batch: list[int]) -> tuple[str, list[int], str]:
        return "[*B, n_agents, n_actions]", [*batch, self.n_agents, self.mixer.action_dim], "Q_i(o_i, .)"

    def _critic_at(self, td: TensorDictBase, params: TensorDictBase, k: int, action: Tensor) -> tuple[Tensor, Tensor]:
        q_all = self._critic(td, params, k)  # Q_i(tau_i, .) [*B, N, A]
        return q_all, q_all.gather(-1, action.long().reshape(*q_all.shape[:-1], 1))

    def _draw(self, policy) -> tuple[Tensor, Tensor]:
        probs, log_probs = policy
        action = torch.distributions.Categorical(probs=probs).sample()  # [*B, N]
        return action, log_probs.gather(-1, action.unsqueeze(-1))

    def _soft_value_target(self, rows: TensorDictBase, policy, alpha_i: Tensor) -> Tensor:
        probs, log_probs = policy
        q_all = self._min_critic(rows, self.qvalue_network_params)
        return (probs * (q_all - alpha_i * log_probs)).sum(-1, keepdim=True)  # exact E over u_i

    def _actor_terms(self, rows: TensorDictBase, policy, alpha_i: Tensor, params: TensorDictBase) -> tuple[Tensor, Tensor]:
        probs, log_probs = policy
        with torch.no_grad():  # Q_i is a constant of eq. (11): no graph through the critics
            q_all = self._min_critic(rows, params)
        loss = (probs * (alpha_i * log_probs - q_all)).sum(-1, keepdim=True)  # exact E [*B, N, 1]
        return loss, (probs * log_probs).sum(-1, keepdim=True).detach()  # -H(pi_i)

    def _advantages(self, td: TensorDictBase, policy, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs, _ = policy
        q_all = self._critic(td, self.qvalue_network_params, 0)
        numerator = (probs * (q_all - v)).sum(-1, keepdim=True)  # exact E over u_i
        action = torch.distributions.Categorical(probs=probs).sample()  # u ~ pi_jt [*B, N]
        return numerator, q_all.gather(-1, action.unsqueeze(-1)) - v, action


class ContinuousFOPLoss(FOPLoss):
    """FOP for continuous actions: ``FOPLoss(..., action_space="continuous")`` builds it
    (arguments: :class:`FOPLoss`'s; ``value_network`` is required). The critic reads the action
    and writes Q_i(tau_i, u_i); expectations over pi_i are one reparameterised draw, scored at its
    own pre-tanh sample (TorchRL's ``(r)sample_and_log_prob``: exact where a tanh-Gaussian
    saturates, SAC's appendix C correction in stable form), and eq. (11)'s gradient flows through
    Q_i(tau_i, u_i) to pi_i. The automatic entropy target is -N * action_dim (SAC's)."""

    action_space = "continuous"
    discrete = False

    def _auto_target_entropy(self, weight: float, num_actions: int) -> float:
        return -float(self.n_agents * self.mixer.action_dim)

    def _optional_in_keys(self) -> list[NestedKey]:
        return []

    def _action_spec(self, batch: list[int]) -> tuple[str, list[int], str]:
        return "[*B, n_agents, action_dim]", [*batch, self.n_agents, self.mixer.action_dim], "actions"

    def _policy_from(self, dist, tensordict: TensorDictBase):
        return dist

    @property
    def _critic_key(self) -> NestedKey:
        return self.tensor_keys.state_action_value

    def _critic_shape(self, batch: list[int]) -> tuple[str, list[int], str]:
        return "[*B, n_agents, 1]", [*batch, self.n_agents, 1], "Q_i(o_i, u_i)"

    def _critic_at(self, td: TensorDictBase, params: TensorDictBase, k: int, action: Tensor) -> tuple[Tensor, Tensor]:
        q = self._critic(td, params, k, action)
        return q, q

    def _draw(self, policy) -> tuple[Tensor, Tensor]:
        action, log_pi = sample_and_log_prob(policy)  # [*B, N, d], [*B, N]
        return action, log_pi.unsqueeze(-1)

    def _soft_value_target(self, rows: TensorDictBase, policy, alpha_i: Tensor) -> Tensor:
        action, log_pi = self._draw(policy)
        return self._min_critic(rows, self.qvalue_network_params, action) - alpha_i * log_pi

    def _actor_terms(self, rows: TensorDictBase, policy, alpha_i: Tensor, params: TensorDictBase) -> tuple[Tensor, Tensor]:
        action, log_pi = rsample_and_log_prob(policy)  # reparameterised: d Q_i / d u_i reaches pi_i
        log_pi = log_pi.unsqueeze(-1)  # [*B, N, 1]
        return alpha_i * log_pi - self._min_critic(rows, params, action), log_pi.detach()

    def _advantages(self, td: TensorDictBase, policy, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        action = policy.sample()
        advantage = self._critic(td, self.qvalue_network_params, 0, action) - v
        return advantage, advantage, action
