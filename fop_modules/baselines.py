"""Baselines on FOP's pipeline, built from TorchRL's own losses: MASAC, MADDPG, QMIX and VDN.

==========  =====================================  ==========  ==================================
builder     TorchRL loss                           actions     exploration while collecting
==========  =====================================  ==========  ==================================
masac       ``SACLoss`` / ``DiscreteSACLoss``      both        its own stochastic policy
maddpg      ``DDPGLoss``                           continuous  ``AdditiveGaussianModule``
qmix, vdn   ``QMixerLoss`` + ``QMixer``/``VDNMixer``  discrete  ``EGreedyModule`` (masked)
==========  =====================================  ==========  ==================================

With ``recurrent=True`` (discrete actions) the agents are PyMARL's GRU agents
(:mod:`fop_modules.recurrent`: observation, last action and agent id -> GRU -> Q_i or policy
logits) that act step by step in the collectors and learn from replayed episodes through
:mod:`fop_modules.episode_losses` (QMIX/VDN: PyMARL's double Q and two-layer hypernetworks by
default; MASAC: a GRU actor beside its critic on observations).

Each algorithm is a typed config whose ``build(env, total_frames)`` reads the env's specs and
returns its :class:`~fop_modules.algorithm.AlgorithmParts`: the loss, the collection policy, the
objectives for :class:`~fop_modules.lightning.MARLLightningModule` and what the loss needs of each
batch (the shape every algorithm has, :mod:`fop_modules.algorithm`). Actors and per-agent critics share parameters across agents with a one-hot
agent id appended (:mod:`fop_modules.networks`); centralised critics are TorchRL's
``MultiAgentMLP(centralized=True, share_params=True)`` over every agent's inputs, as BenchMARL's
masac and maddpg. Per-agent critics (MASAC, MADDPG) learn the team reward, copied per agent by
:func:`team_reward_per_agent`; QMIX and VDN learn Q_tot from the team reward at the root.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal, get_args

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.envs import EnvBase
from torchrl.modules import (
    AdditiveGaussianModule,
    EGreedyModule,
    MultiAgentMLP,
    QMixer,
    QValueModule,
    TanhModule,
    VDNMixer,
)
from torchrl.objectives import DDPGLoss, LossModule, SACLoss, ValueEstimators

from fop_modules import networks, recurrent
from fop_modules.algorithm import AlgorithmParts
from fop_modules.choices import choices_enum
from fop_modules.envs.sizes import env_sizes
from fop_modules.episode_losses import EpisodeDiscreteSACLoss, EpisodeQMixerLoss
from fop_modules.loss import trainable
from fop_modules.optimisation import Objective, check_rates

__all__ = [
    "WrongActionSpace",
    "MASACConfig",
    "MADDPGConfig",
    "ValueDecompositionConfig",
    "Mixer",
    "HyperQMixer",
    "masac",
    "maddpg",
    "value_decomposition",
    "team_reward_per_agent",
]

OBS_KEY, ACTION_KEY, MASK_KEY = networks.OBS_KEY, networks.ACTION_KEY, networks.MASK_KEY
MASK_LOGIT = -18.0  # masked actions' logit in the SAC actor (-inf gives NaN in sum p log p; BenchMARL's value)
ANNEAL_SHARE = 1 / 3  # exploration anneals over this share of the run when not given (BenchMARL)
# PyMARL's QMIX (src/config/algs/qmix.yaml), the defaults of GRU agents' null keys:
PYMARL_ANNEAL_FRAMES = 50_000  # epsilon_anneal_time
PYMARL_HYPERNET_EMBED = 64  # hypernet_layers: 2, hypernet_embed: 64
PYMARL_DOUBLE_Q = True  # double_q
# JaxMARL's QMIX-RNN on SMAX (baselines/QLearning/config/alg/qmix_rnn_smax.yaml): MIXER_INIT_SCALE
JAXMARL_MIXER_INIT_SCALE = 0.001


class WrongActionSpace(ValueError):
    """The algorithm does not apply to the env's actions (QMIX/VDN on continuous, MADDPG on
    discrete); the message says what to use instead."""


@dataclass
class MASACConfig:
    """Multi-agent SAC (BenchMARL's masac): see configs/algorithm/masac.yaml for each key."""

    name: str = "masac"
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"  # hidden layers of the MLPs: relu | tanh (BenchMARL: tanh)
    agent_id: bool = True
    recurrent: bool = False
    rnn_hidden: int = 64
    centralised_critic: bool = True
    num_qvalue_nets: int = 2
    loss_function: str = "l2"
    alpha_init: float = 1.0
    fixed_alpha: bool = False
    target_entropy: float | str = "auto"
    discrete_target_entropy_weight: float = 0.2
    gamma: float = 0.99
    lr_actor: float = 3e-4
    lr_qvalue: float = 3e-4
    lr_alpha: float = 3e-4

    def __post_init__(self) -> None:
        _check_activation(self.activation)
        check_rates("MASACConfig", lr_actor=self.lr_actor, lr_qvalue=self.lr_qvalue, lr_alpha=self.lr_alpha)

    takes_temperature: ClassVar[bool] = False  # SAC's own alpha, learned or fixed

    @property
    def uses_gru(self) -> bool:
        return self.recurrent

    def check_replay(self, sequence_length: int | None) -> None:
        _check_agents_replay("MASACConfig", self.recurrent, sequence_length, can_recur=True)

    def build(self, env: EnvBase, total_frames: int) -> AlgorithmParts:
        """:func:`masac` for ``env`` (``total_frames`` is not needed)."""
        return masac(env, self)


@dataclass
class MADDPGConfig:
    """MADDPG with a centralised critic (BenchMARL's maddpg): configs/algorithm/maddpg.yaml."""

    name: str = "maddpg"
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"  # hidden layers of the MLPs: relu | tanh (BenchMARL: tanh)
    agent_id: bool = True
    loss_function: str = "l2"
    gamma: float = 0.99
    lr_actor: float = 3e-4
    lr_qvalue: float = 3e-4
    sigma_init: float = 1.0
    sigma_end: float = 0.1
    anneal_frames: int | None = None

    def __post_init__(self) -> None:
        _check_activation(self.activation)
        check_rates("MADDPGConfig", lr_actor=self.lr_actor, lr_qvalue=self.lr_qvalue)

    takes_temperature: ClassVar[bool] = False  # Gaussian action noise
    uses_gru: ClassVar[bool] = False  # MLP agents only

    def check_replay(self, sequence_length: int | None) -> None:
        _check_agents_replay("MADDPGConfig", False, sequence_length, can_recur=False)

    def build(self, env: EnvBase, total_frames: int) -> AlgorithmParts:
        """:func:`maddpg` for ``env``, its noise annealed over a third of ``total_frames`` unless
        ``anneal_frames`` says otherwise."""
        return maddpg(env, self, total_frames)


def _check_activation(name: str) -> None:
    if name not in networks.ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(networks.ACTIVATIONS)}, got {name!r}")


def _check_agents_replay(owner: str, recurrent: bool, sequence_length: int | None, can_recur: bool) -> None:
    """GRU agents learn from replayed episodes (``sequence_length``), MLP agents from transitions."""
    if recurrent and sequence_length is None:
        raise ValueError(
            f"{owner}.recurrent=True (GRU agents) learns from replayed episodes: set "
            f"CollectConfig.sequence_length (the episode limit), or {owner}.recurrent=False"
        )
    if not recurrent and sequence_length is not None:
        instead = f" or {owner}.recurrent=True (GRU agents)" if can_recur else ""
        raise ValueError(
            f"{owner} replays transitions (MLP agents), but CollectConfig.sequence_length is "
            f"{sequence_length}: set CollectConfig.sequence_length=None{instead}"
        )


MixerName = Literal["qmix", "vdn"]
Mixer = choices_enum("Mixer", MixerName, "ValueDecompositionConfig.mixer: QMIX's monotonic mixer or VDN's sum.")


@dataclass
class ValueDecompositionConfig:
    """QMIX / VDN agents and mixer: configs/algorithm/qmix.yaml and vdn.yaml."""

    name: str = "qmix"
    mixer: Mixer = Mixer.qmix  # QMIX's monotonic mixer on the state | VDN's sum
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    agent_id: bool = True
    recurrent: bool = False
    rnn_hidden: int = 64
    mixing_embed_dim: int = 32
    hypernet_embed: int | None = None
    double_q: bool | None = None
    mixer_init_scale: float | None = None
    loss_function: str = "l2"
    gamma: float = 0.99
    lr_qvalue: float = 5e-4  # the agents' Q networks and the mixer (one objective)
    eps_init: float = 1.0
    eps_end: float = 0.05
    anneal_frames: int | None = None

    def __post_init__(self) -> None:
        check_rates("ValueDecompositionConfig", lr_qvalue=self.lr_qvalue)
        if self.mixer not in get_args(MixerName):
            raise ValueError(f"ValueDecompositionConfig.mixer must be 'qmix' or 'vdn', got {self.mixer!r}")

    takes_temperature: ClassVar[bool] = False  # epsilon-greedy

    @property
    def uses_gru(self) -> bool:
        return self.recurrent

    def check_replay(self, sequence_length: int | None) -> None:
        _check_agents_replay("ValueDecompositionConfig", self.recurrent, sequence_length, can_recur=True)

    def build(self, env: EnvBase, total_frames: int) -> AlgorithmParts:
        """:func:`value_decomposition` for ``env`` (``total_frames`` sizes the MLP agents' epsilon
        anneal, a third of the run)."""
        return value_decomposition(env, self, total_frames)

    def resolved(self, total_frames: int) -> "ValueDecompositionConfig":
        """A copy with the null keys filled: the reference settings of the agents' kind. GRU
        agents: PyMARL's QMIX (anneal over 50k frames, hypernetworks of 64, double Q) with
        JaxMARL's SMAX mixer init (0.001). MLP agents: BenchMARL's (a third of the run, TorchRL's
        one-layer hypernetworks, no double Q, PyTorch's init).

        Examples:
            >>> ValueDecompositionConfig(recurrent=True).resolved(10**6).anneal_frames
            50000
        """
        if self.recurrent:
            defaults = dict(anneal_frames=PYMARL_ANNEAL_FRAMES, hypernet_embed=PYMARL_HYPERNET_EMBED,
                            double_q=PYMARL_DOUBLE_Q, mixer_init_scale=JAXMARL_MIXER_INIT_SCALE)
        else:
            defaults = dict(anneal_frames=int(total_frames * ANNEAL_SHARE), hypernet_embed=0, double_q=False,
                            mixer_init_scale=0.0)
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def team_reward_per_agent(batch: TensorDictBase) -> TensorDictBase:
    """Copies the team ``("next", "reward"/"done"/"terminated")`` [*B, 1] to every agent,
    ``("next", "agents", key)`` [*B, N, 1]: per-agent critics' TD targets need reward, done and
    value of one shape (as BenchMARL's ``process_batch``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> batch = TensorDict({"next": {"reward": torch.tensor([[2.0]]),
        ...     "done": torch.ones(1, 1, dtype=torch.bool), "terminated": torch.ones(1, 1, dtype=torch.bool),
        ...     "agents": TensorDict({}, [1, 3])}}, [1])
        >>> team_reward_per_agent(batch)["next", "agents", "reward"].shape
        torch.Size([1, 3, 1])
    """
    agents = batch.get(("next", "agents")).batch_size  # [*B, N]
    for key in ("reward", "done", "terminated"):
        value = batch.get(("next", key))  # [*B, 1]
        batch.set(("next", "agents", key), value.unsqueeze(-2).expand(*agents, value.shape[-1]))
    return batch


def _centralised(n_in: int, n_out: int, n_agents: int, hidden: list[int],
                 activation: type[nn.Module] = nn.ReLU) -> MultiAgentMLP:
    """A critic that reads every agent's inputs and writes one output per agent (shared)."""
    return MultiAgentMLP(
        n_agent_inputs=n_in, n_agent_outputs=n_out, n_agents=n_agents, centralized=True,
        share_params=True, depth=len(hidden), num_cells=list(hidden), activation_class=activation,
    )


def _per_agent_keys(loss: LossModule, **keys) -> None:
    """Per-agent reward and done (written by :func:`team_reward_per_agent`)."""
    loss.set_keys(
        reward=("agents", "reward"), done=("agents", "done"), terminated=("agents", "terminated"), **keys
    )


def masac(env: EnvBase, cfg: MASACConfig) -> AlgorithmParts:
    """Multi-agent SAC: TorchRL's ``SACLoss`` (tanh-Gaussian) or ``DiscreteSACLoss`` (masked
    softmax), a shared actor with agent id, a centralised or per-agent critic."""
    sizes = env_sizes(env)
    n_agents, obs_dim, discrete = sizes.n_agents, sizes.obs_dim, sizes.discrete
    activation = networks.ACTIVATIONS[cfg.activation]
    net = {"hidden": list(cfg.hidden), "agent_id": cfg.agent_id, "activation": activation}
    if discrete:
        n_actions = sizes.action_dim
        if cfg.recurrent:  # PyMARL's GRU agent as the actor, on replayed episodes
            actor = recurrent.recurrent_discrete_actor(n_agents, obs_dim, n_actions, hidden=cfg.rnn_hidden,
                                                       agent_id=cfg.agent_id, neg_inf=MASK_LOGIT)
        else:
            actor = networks.discrete_actor(n_agents, obs_dim, n_actions, masked=sizes.masked, neg_inf=MASK_LOGIT,
                                            **net)
        if cfg.centralised_critic:
            critic = TensorDictModule(_centralised(obs_dim, n_actions, n_agents, cfg.hidden, activation),
                                      in_keys=[OBS_KEY], out_keys=[("agents", "action_value")])
        else:
            critic = networks.discrete_critic(n_agents, obs_dim, n_actions, **net)
        loss = EpisodeDiscreteSACLoss(
            actor, critic, action_space="categorical", num_actions=n_actions,
            num_qvalue_nets=cfg.num_qvalue_nets, loss_function=cfg.loss_function,
            alpha_init=cfg.alpha_init, fixed_alpha=cfg.fixed_alpha,
            target_entropy_weight=cfg.discrete_target_entropy_weight, target_entropy=cfg.target_entropy,
        )
        _per_agent_keys(loss, action_value=("agents", "action_value"), action=ACTION_KEY)
    else:
        if cfg.recurrent:
            raise WrongActionSpace(
                f"MASAC with recurrent=True (GRU agents) needs discrete actions, but "
                f"{type(env).__name__} has continuous actions {ACTION_KEY}: set recurrent=False"
            )
        action_dim = sizes.action_dim
        actor = networks.continuous_actor(n_agents, obs_dim, action_dim, low=sizes.low, high=sizes.high, **net)
        if cfg.centralised_critic:
            critic = TensorDictModule(_centralised(obs_dim + action_dim, 1, n_agents, cfg.hidden, activation),
                                      in_keys=[OBS_KEY, ACTION_KEY], out_keys=[("agents", "state_action_value")])
        else:
            critic = networks.continuous_critic(n_agents, obs_dim, action_dim, **net)
        # "auto": SAC's -dim(action) per agent (log pi_i is per agent here, not of the joint action)
        target = -float(action_dim) if cfg.target_entropy == "auto" else float(cfg.target_entropy)
        loss = SACLoss(
            actor, critic, num_qvalue_nets=cfg.num_qvalue_nets, loss_function=cfg.loss_function,
            alpha_init=cfg.alpha_init, fixed_alpha=cfg.fixed_alpha, target_entropy=target,
        )
        _per_agent_keys(loss, state_action_value=("agents", "state_action_value"), action=ACTION_KEY)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.gamma)
    objectives = {
        "actor": Objective("loss_actor", [{"params": trainable(loss.actor_network_params), "lr": cfg.lr_actor}]),
        "qvalue": Objective("loss_qvalue", [{"params": trainable(loss.qvalue_network_params), "lr": cfg.lr_qvalue}]),
    }
    if not cfg.fixed_alpha:
        objectives["alpha"] = Objective("loss_alpha", [{"params": [loss.log_alpha], "lr": cfg.lr_alpha}])

    def joint_q(batch: TensorDictBase) -> dict[str, torch.Tensor]:
        with loss.qvalue_network_params[0].to_module(loss.qvalue_network):  # twin 0
            return {"q_i": loss.qvalue_network(batch.clone()).get(("agents", "action_value"))}

    return AlgorithmParts(loss, actor, objectives, process_batch=team_reward_per_agent,
                          joint_q=joint_q if discrete else None)


def maddpg(env: EnvBase, cfg: MADDPGConfig, total_frames: int) -> AlgorithmParts:
    """MADDPG: TorchRL's ``DDPGLoss`` with a deterministic shared actor (tanh onto the action
    box), a centralised critic Q(o_1..o_N, u_1..u_N) per agent and additive Gaussian noise."""
    sizes = env_sizes(env)
    n_agents, obs_dim, action_dim = sizes.n_agents, sizes.obs_dim, sizes.action_dim
    if sizes.discrete:
        raise WrongActionSpace(_wrong_actions("maddpg", env, "discrete", "masac, qmix or vdn (or fop)"))
    action_spec = env.full_action_spec_unbatched[ACTION_KEY]  # [N, d]: any number of envs
    activation = networks.ACTIVATIONS[cfg.activation]
    mlp = networks.AgentMLP(obs_dim, action_dim, n_agents, hidden=cfg.hidden, agent_id=cfg.agent_id,
                            activation=activation,
                            last_layer_scale=0.01)  # start near the centre of the box, as FOP's actor
    actor = TensorDictSequential(
        TensorDictModule(mlp, in_keys=[OBS_KEY], out_keys=[("agents", "param")]),
        TanhModule(in_keys=[("agents", "param")], out_keys=[ACTION_KEY], spec=action_spec),
    )
    noise = AdditiveGaussianModule(
        spec=action_spec, sigma_init=cfg.sigma_init, sigma_end=cfg.sigma_end,
        annealing_num_steps=cfg.anneal_frames or int(total_frames * ANNEAL_SHARE), action_key=ACTION_KEY,
    )
    critic = TensorDictModule(_centralised(obs_dim + action_dim, 1, n_agents, cfg.hidden, activation),
                              in_keys=[OBS_KEY, ACTION_KEY], out_keys=[("agents", "state_action_value")])
    loss = DDPGLoss(actor, critic, loss_function=cfg.loss_function, delay_value=True)
    _per_agent_keys(loss, state_action_value=("agents", "state_action_value"))
    loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.gamma)
    objectives = {
        "actor": Objective("loss_actor", [{"params": trainable(loss.actor_network_params), "lr": cfg.lr_actor}]),
        "qvalue": Objective("loss_value", [{"params": trainable(loss.value_network_params), "lr": cfg.lr_qvalue}]),
    }
    return AlgorithmParts(loss, TensorDictSequential(actor, noise), objectives,
                          process_batch=team_reward_per_agent, exploration=noise)


class HyperQMixer(QMixer):
    """TorchRL's ``QMixer`` with PyMARL's two-layer hypernetworks (``hypernet_layers: 2``): the
    mixing weights W_1(s), W_final(s) are ``Linear -> ReLU -> Linear`` of the state with
    ``hypernet_embed`` hidden units; ``hypernet_embed=0`` keeps TorchRL's one layer.

    ``init_scale > 0`` starts the layers that output W_1(s), W_final(s), b_1(s) and V(s)
    orthogonal with that gain and zero bias (JaxMARL's ``MIXER_INIT_SCALE``), so that Q_tot starts
    near 0 whatever the scale of the state (JaxMARL's SMAX world state gives positions in map
    units, 0 to 32); the hypernetworks' first layers keep PyTorch's initialisation (JaxMARL scales them too,
    which, under RMSprop with eps 1e-5 rather than JaxMARL's RAdam, leaves the agents' gradients at
    about 1e-8). 0 keeps PyTorch's initialisation everywhere.

    Examples:
        >>> import torch
        >>> mixer = HyperQMixer(state_shape=(5,), mixing_embed_dim=32, n_agents=3, hypernet_embed=64)
        >>> mixer(torch.randn(7, 3, 1), torch.randn(7, 5)).shape
        torch.Size([7, 1])
    """

    def __init__(self, state_shape, mixing_embed_dim: int, n_agents: int, hypernet_embed: int = 0,
                 init_scale: float = 0.0, device="cpu") -> None:
        super().__init__(state_shape=state_shape, mixing_embed_dim=mixing_embed_dim, n_agents=n_agents,
                         device=device)
        if hypernet_embed < 0:
            raise ValueError(f"hypernet_embed must be >= 0 (0: one-layer hypernetworks), got {hypernet_embed}")
        if hypernet_embed:
            def two_layers(n_out: int) -> nn.Sequential:
                return nn.Sequential(nn.Linear(self.state_dim, hypernet_embed, device=device), nn.ReLU(),
                                     nn.Linear(hypernet_embed, n_out, device=device))
            self.hyper_w_1 = two_layers(mixing_embed_dim * n_agents)
            self.hyper_w_final = two_layers(mixing_embed_dim)
        if init_scale < 0:
            raise ValueError(f"init_scale must be >= 0 (0: PyTorch's initialisation), got {init_scale}")
        if init_scale:  # the layers that output W_1(s), W_final(s), b_1(s) and V(s)
            for layer in (self.hyper_w_1, self.hyper_w_final, self.hyper_b_1, self.V[-1]):
                layer = layer[-1] if isinstance(layer, nn.Sequential) else layer
                nn.init.orthogonal_(layer.weight, gain=init_scale)
                nn.init.zeros_(layer.bias)


def value_decomposition(env: EnvBase, cfg: ValueDecompositionConfig, total_frames: int) -> AlgorithmParts:
    """QMIX (``cfg.mixer="qmix"``: monotonic mixer on the state) or VDN (``"vdn"``: the sum):
    TorchRL's ``QMixerLoss`` (:class:`~fop_modules.episode_losses.EpisodeQMixerLoss`) on shared
    per-agent Q networks with agent id (MLP, or PyMARL's GRU agent with ``cfg.recurrent``), greedy
    over the available actions, epsilon-greedy while collecting."""
    sizes = env_sizes(env)
    n_agents, obs_dim, state_dim, n_actions = sizes.n_agents, sizes.obs_dim, sizes.state_dim, sizes.action_dim
    if not sizes.discrete:
        raise WrongActionSpace(_wrong_actions(cfg.name, env, "continuous", "masac or maddpg (or fop)"))
    action_spec = env.full_action_spec_unbatched[ACTION_KEY]  # [N]: any number of envs
    masked = sizes.masked
    cfg = cfg.resolved(total_frames)
    if cfg.recurrent:  # ("agents", "action_value") [*B, N, A] from the collectors' hidden state
        q_net = recurrent.recurrent_discrete_critic(
            n_agents, obs_dim, n_actions, hidden=cfg.rnn_hidden, agent_id=cfg.agent_id,
            embed_key=recurrent.EMBED_KEY, hidden_key=recurrent.HIDDEN_KEY)
    else:
        q_net = networks.discrete_critic(n_agents, obs_dim, n_actions, hidden=cfg.hidden, agent_id=cfg.agent_id)

    def greedy(mask_key) -> TensorDictSequential:  # Q_i, then the greedy available action and its value
        return TensorDictSequential(q_net, QValueModule(
            action_space="categorical", action_value_key=("agents", "action_value"), action_mask_key=mask_key,
            out_keys=[ACTION_KEY, ("agents", "action_value"), ("agents", "chosen_action_value")],
        ))

    if cfg.mixer == "qmix":
        mixer_net = HyperQMixer(state_shape=(state_dim,), mixing_embed_dim=cfg.mixing_embed_dim,
                                n_agents=n_agents, hypernet_embed=cfg.hypernet_embed,
                                init_scale=cfg.mixer_init_scale)
        in_keys = [("agents", "chosen_action_value"), "state"]
    else:
        mixer_net, in_keys = VDNMixer(n_agents=n_agents, device="cpu"), [("agents", "chosen_action_value")]
    mixer_module = TensorDictModule(mixer_net, in_keys=in_keys, out_keys=["chosen_action_value"])  # Q_tot [*B, 1]
    # the loss's greedy step always reads a mask (all true where the env has none; double Q's one-hot)
    loss = EpisodeQMixerLoss(greedy(MASK_KEY), mixer_module, num_actions=n_actions, double_q=cfg.double_q,
                             loss_function=cfg.loss_function, delay_value=True, action_space="categorical")
    loss.set_keys(action_value=("agents", "action_value"), local_value=("agents", "chosen_action_value"),
                  global_value="chosen_action_value", action=ACTION_KEY)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.gamma)
    egreedy = EGreedyModule(
        spec=action_spec, eps_init=cfg.eps_init, eps_end=cfg.eps_end, annealing_num_steps=cfg.anneal_frames,
        action_key=ACTION_KEY, action_mask_key=MASK_KEY if masked else None,
    )
    params = trainable(loss.local_value_network_params, loss.mixer_network_params)
    objectives = {"qvalue": Objective("loss", [{"params": params, "lr": cfg.lr_qvalue}])}

    def joint_q(batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """Q_i of every action and Q_tot of the batch's joint actions (VDN: Q_tot = sum_i Q_i)."""
        with loss.local_value_network_params.to_module(loss.local_value_network):
            q_i = loss.local_value_network[0](batch.clone()).get(("agents", "action_value"))  # [*B, N, A]
        chosen = q_i.gather(-1, batch.get(ACTION_KEY).unsqueeze(-1))  # [*B, N, 1]
        td = TensorDict({("agents", "chosen_action_value"): chosen, "state": batch.get("state")},
                        batch.batch_size)
        with loss.mixer_network_params.to_module(loss.mixer_network):
            return {"q_i": q_i, "q_jt": loss.mixer_network(td).get("chosen_action_value")}

    policy = TensorDictSequential(greedy(MASK_KEY if masked else None), egreedy)
    return AlgorithmParts(loss, policy, objectives, exploration=egreedy, joint_q=None if cfg.recurrent else joint_q)


def _wrong_actions(name: str, env: EnvBase, space: str, instead: str) -> str:
    needs = "continuous" if space == "discrete" else "discrete"
    return (f"algorithm={name} needs {needs} actions, but {type(env).__name__} has {space} actions "
            f"{ACTION_KEY}: use algorithm={instead} instead")
