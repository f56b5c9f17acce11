"""One FOP update against a hand-written plain-PyTorch update of the same maths and networks.

Run: ``OMP_NUM_THREADS=1 python benchmarks/update_cost.py [--tasks matrix_game] [--rounds 5] [--repeats 100]``.

``fop`` is ``FOPLightningModule.update`` as training runs it (the learner built by
``recipes/train.py`` for the task's experiment, optimisers attached as ``fit()`` would), on one
replay batch sampled from its own buffer after collecting with its own policy. ``hand`` is the
same update written with plain tensors and ``torch.optim``: no TensorDict, no TorchRL, no
Lightning. It runs copies of the learner's own networks (the per-agent MLPs and the mixer, whose
``mix`` is plain tensor maths) from the same weights, with the same optimisers, gradient clip,
temperature and target update, drawing the same random numbers in the same order, so one update
of each from the same state gives the same parameters: the script checks this before it times
anything (``max |diff|``).

Rounds alternate the two (``--rounds`` x ``--repeats`` updates each after one warm-up call,
median per round: ``learner_update.timed``); the
printed ratio is the median over rounds of fop / hand (target: at most 1.5). Timings on a loaded
machine are noisy; the ratio of interleaved rounds much less so.

Tasks: ``matrix_game`` (the default job: 2 agents, 3 actions, one critic, analytic V,
stop-gradient mixer, scheduled alpha).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
from functools import partial

import torch
import torch.nn.functional as F
from tensordict.nn import NormalParamExtractor
from torch import nn
from torchrl.collectors import Collector

from fop_modules.networks import AgentMLP
from fop_modules.target_update import FusedSoftUpdate
from learner_update import timed
from smac_shapes import attach_optimizers, recipe_config, recipe_learner

TASKS = {  # task -> (experiment, Hydra overrides)
    "matrix_game": ("matrix_game", []),
    "mtq": ("mtq", []),
    "vmas_navigation": ("vmas_navigation", []),
}


def _materialised(module: nn.Module, params) -> nn.Module:
    """A copy of a loss's functional module (its parameters on the meta device) holding ``params``."""
    network = copy.deepcopy(module).to_empty(device="cpu")
    network.load_state_dict(dict(params.flatten_keys(".").items()))
    return network


def _plain(module: nn.Module, params) -> AgentMLP:
    """The AgentMLP of a loss's functional network, as a plain module holding ``params``."""
    return next(m for m in _materialised(module, params).modules() if isinstance(m, AgentMLP))


class _HandWrittenFOP:
    """What both hand-written updates share: copies of ``module``'s critics, mixers (twins
    unstacked), actor and V networks, its Adam optimisers, gradient clip and polyak update."""

    def __init__(self, module) -> None:
        loss, optim = module.loss_module, module.optim
        recipe_optimizer = optim.make_optimizer([{"params": [torch.zeros(1, requires_grad=True)], "lr": 1.0}])
        if type(recipe_optimizer) is not torch.optim.Adam or not isinstance(module.target_updater, FusedSoftUpdate):
            raise ValueError("the hand-written update implements Adam and the soft target update only")
        self.k, self.n = loss.num_qvalue_nets, loss.n_agents
        twin = (lambda params, k: params[k]) if self.k > 1 else (lambda params, k: params)
        self.actor = _plain(loss.actor_network, loss.actor_network_params)
        self.critics = [_plain(loss.qvalue_network, twin(loss.qvalue_network_params, k)) for k in range(self.k)]
        self.target_critics = [_plain(loss.qvalue_network, twin(loss.target_qvalue_network_params, k))
                               for k in range(self.k)]
        self.mixers = [_materialised(loss.mixer, twin(loss.mixer_params, k)) for k in range(self.k)]
        self.target_mixers = [_materialised(loss.mixer, twin(loss.target_mixer_params, k)) for k in range(self.k)]
        for mixer in (*self.mixers, *self.target_mixers):
            mixer.check_values = False  # plain maths: no input checks
        self.value = self.target_value = None
        if loss.value_network is not None:
            self.value = _plain(loss.value_network, loss.value_network_params)
            self.target_value = _plain(loss.value_network, loss.target_value_network_params)
        critic_params = [p for c in self.critics for p in c.parameters()]
        mixer_params = [p for m in self.mixers for p in m.parameters()]
        lr = {name: [group["lr"] for group in objective.param_groups]  # the recipe's rates
              for name, objective in module.objectives.items()}
        groups = ([{"params": critic_params, "lr": lr["qvalue"][0]}, {"params": mixer_params, "lr": lr["qvalue"][1]}]
                  if len(lr["qvalue"]) == 2 else [{"params": critic_params + mixer_params, "lr": lr["qvalue"][0]}])
        adam = partial(torch.optim.Adam, eps=recipe_optimizer.defaults["eps"])
        self.q_optimizer = adam(groups)
        self.value_optimizer = None if self.value is None else adam([{"params": list(self.value.parameters()),
                                                                       "lr": lr["value"][0]}])
        self.actor_optimizer = adam([{"params": list(self.actor.parameters()), "lr": lr["actor"][0]}])
        self.log_alpha = None
        if loss.learn_alpha:
            self.log_alpha = nn.Parameter(loss.log_alpha.detach().clone())
            self.alpha_optimizer = adam([{"params": [self.log_alpha], "lr": lr["alpha"][0]}])
        else:
            self.fixed_alpha = loss.alpha.clone()
        self.target_entropy = loss.target_entropy.clone()
        self.paper_alpha_i = loss.individual_temperature == "paper"
        self.gamma = loss.value_estimator.gamma.item()
        self.tau, self.clip = 1 - module.target_updater.eps, optim.grad_clip
        self.mean_entropy = loss.entropy_reduction == "mean"

    @property
    def alpha(self) -> torch.Tensor:
        return self.fixed_alpha if self.log_alpha is None else self.log_alpha.detach().exp()

    def _step(self, optimizer, loss) -> None:
        optimizer.zero_grad()
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.clip)
        optimizer.step()

    def _joint_log_prob(self, log_pi):  # [B, N, 1] -> [B, 1]
        return log_pi.mean(-2) if self.mean_entropy else log_pi.sum(-2)

    def _target_update(self) -> None:
        pairs = [*zip(self.critics, self.target_critics), *zip(self.mixers, self.target_mixers)]
        if self.value is not None:
            pairs.append((self.value, self.target_value))
        with torch.no_grad():  # polyak target update
            for online, target in pairs:
                for p, tp in zip(online.parameters(), target.parameters()):
                    tp.lerp_(p, self.tau)

    def parameters(self) -> list[torch.Tensor]:
        nets = (self.actor, *self.critics, *self.mixers, *([self.value] if self.value is not None else []))
        return [p for net in nets for p in net.parameters()] + ([self.log_alpha] if self.log_alpha is not None else [])


class HandWrittenDiscreteFOP(_HandWrittenFOP):
    """FOP's update (Algorithm 1: eq. 9, eq. 11, then the targets) for discrete actions with the
    analytic soft V_i and a scheduled alpha, written with plain tensors, on copies of ``module``'s
    networks, optimisers and settings."""

    def __init__(self, module) -> None:
        super().__init__(module)
        if self.value is not None or self.log_alpha is not None or self.paper_alpha_i:
            raise ValueError("the discrete hand-written update has the analytic V_i and a scheduled, shared alpha")

    def _policy(self, obs, mask):
        log_probs = torch.log_softmax(self.actor(obs).masked_fill(~mask, -torch.inf), -1)
        return log_probs.exp(), torch.where(mask, log_probs, torch.zeros_like(log_probs))

    def _soft_value(self, q, mask):  # V_i = alpha logsumexp(Q_i / alpha) over available actions
        return self.alpha * torch.logsumexp(q.masked_fill(~mask, -torch.inf) / self.alpha, -1, keepdim=True)

    def update(self, b: dict[str, torch.Tensor]) -> None:
        # eq. (9): y = r + gamma (1 - d) (min_k Q_jt^target(s', u') - alpha log pi_jt(u')), u' ~ pi_jt
        with torch.no_grad():
            probs, log_probs = self._policy(b["next_obs"], b["next_mask"])
            next_action = torch.distributions.Categorical(probs=probs).sample()
            log_pi = log_probs.gather(-1, next_action.unsqueeze(-1))
            q_next = []
            for critic, mixer in zip(self.target_critics, self.target_mixers):
                q_all = critic(b["next_obs"])
                v = self._soft_value(q_all, b["next_mask"])
                q_next.append(mixer.mix(q_all.gather(-1, next_action.unsqueeze(-1)), v, b["next_state"], next_action)[0])
            entropy = self._joint_log_prob(log_pi)
            y = b["reward"] + self.gamma * (~b["terminated"]) * (torch.stack(q_next).amin(0) - self.alpha * entropy)
        loss_q = 0.0
        for critic, mixer in zip(self.critics, self.mixers):
            q_all = critic(b["obs"])
            v = self._soft_value(q_all.detach(), b["mask"])
            q_jt, _, regulariser = mixer.mix(q_all.gather(-1, b["action"].unsqueeze(-1)), v, b["state"], b["action"])
            loss_q = loss_q + (F.mse_loss(q_jt, y, reduction="none") + regulariser).mean()
        self._step(self.q_optimizer, loss_q)
        # eq. (11): sum_u pi_i(u) (alpha log pi_i(u) - min_k Q_i^k(u))
        probs, log_probs = self._policy(b["obs"], b["mask"])
        with torch.no_grad():
            q_all = torch.stack([critic(b["obs"]) for critic in self.critics]).amin(0)
        loss_actor = (probs * (self.alpha * log_probs - q_all)).sum(-1).mean()
        self._step(self.actor_optimizer, loss_actor)
        self._target_update()


class HandWrittenContinuousFOP(_HandWrittenFOP):
    """FOP's update in the paper's form for continuous actions (Algorithm 1: eq. 9, eq. 10,
    eq. 11, the dual temperature when learned, then the targets): tanh-Gaussian policies on the
    action box, V_i networks, alpha_i shared or by the paper's formula, with plain tensors.

    The policy is TorchRL's ``TanhNormal`` as ``networks.continuous_actor`` builds it, written
    out: loc and a biased-softplus scale (``NormalParamExtractor``), u = loc + scale * noise drawn
    by ``torch.normal``, a = c + h * tanh(u) clamped 1 - 1e-6 inside the box, and log pi(a)
    scored at u itself (exact at saturation) with the tanh and affine Jacobians.
    """

    def __init__(self, module) -> None:
        super().__init__(module)
        if self.value is None:
            raise ValueError("continuous FOP has V_i networks")
        loss = module.loss_module
        actor = _materialised(loss.actor_network, loss.actor_network_params)
        extractor = next(m for m in actor.modules() if isinstance(m, NormalParamExtractor))
        self.scale_bias, self.scale_min = extractor.scale_mapping.bias, extractor.scale_mapping.min_val
        self.scale_lb = extractor.scale_lb
        dist = next(m.distribution_kwargs for m in loss.actor_network.modules() if hasattr(m, "distribution_kwargs"))
        self.centre, self.half = (dist["high"] + dist["low"]) / 2, (dist["high"] - dist["low"]) / 2
        self.lim = 1.0 - torch.finfo(torch.float32).resolution

    def _policy(self, obs):  # (loc, scale) of the pre-tanh Gaussian [B, N, d]
        loc, raw = self.actor(obs).chunk(2, -1)
        return loc, (F.softplus(raw + self.scale_bias) + self.scale_min).clamp_min(self.scale_lb)

    def _sample(self, loc, scale, reparameterised: bool = False):  # (action a, its pre-tanh u)
        if reparameterised:  # Normal.rsample
            u = loc + torch.empty_like(loc).normal_() * scale
        else:  # Normal.sample
            u = torch.normal(loc.detach(), scale.detach())
        return self.centre + self.half * torch.tanh(u).clamp(-self.lim, self.lim), u

    def _log_prob(self, loc, scale, u):  # log pi_i(a(u)) [B, N, 1]
        log_jacobian = 2 * (math.log(2) - u - F.softplus(-2 * u)) + math.log(self.half)
        normal = -((u - loc) ** 2) / (2 * scale**2) - scale.log() - math.log(math.sqrt(2 * math.pi))
        return (normal - log_jacobian).sum(-1, keepdim=True)

    def _min_q(self, obs, action):
        return torch.stack([critic(obs, action) for critic in self.critics]).amin(0)

    @torch.no_grad()
    def _alpha_i(self, obs, state):  # [N, 1]
        alpha = self.alpha
        if not self.paper_alpha_i or alpha == 0:
            return alpha.expand(self.n, 1)
        # alpha_i = alpha E_{u_i~pi_i}[Q_i - V_i] / E_{u~pi_jt}[lambda_i (Q_i - V_i)], twin 0
        v = self.value(obs)
        action, _ = self._sample(*self._policy(obs))
        advantage = self.critics[0](obs, action) - v
        _, lam, _ = self.mixers[0].mix(advantage + v, v, state, action)
        ratio = advantage.mean(0) / (lam * advantage).mean(0)
        return alpha * torch.nan_to_num(ratio, nan=1.0).clamp(0.1, 10.0)

    def update(self, b: dict[str, torch.Tensor]) -> None:
        # eq. (9): y = r + gamma (1 - d) (min_k Q_jt^target(s', u') - alpha log pi_jt(u')), u' ~ pi_jt
        with torch.no_grad():
            loc, scale = self._policy(b["next_obs"])
            next_action, u = self._sample(loc, scale)
            log_pi = self._log_prob(loc, scale, u)
            v = self.target_value(b["next_obs"])
            q_next = [mixer.mix(critic(b["next_obs"], next_action), v, b["next_state"], next_action)[0]
                      for critic, mixer in zip(self.target_critics, self.target_mixers)]
            y = b["reward"] + self.gamma * (~b["terminated"]) * (
                torch.stack(q_next).amin(0) - self.alpha * self._joint_log_prob(log_pi))
            v = self.value(b["obs"])
        loss_q = 0.0
        for critic, mixer in zip(self.critics, self.mixers):
            q_jt, _, regulariser = mixer.mix(critic(b["obs"], b["action"]), v, b["state"], b["action"])
            loss_q = loss_q + (F.mse_loss(q_jt, y, reduction="none") + regulariser).mean()
        self._step(self.q_optimizer, loss_q)
        # eq. (10): V_i regresses Q_i(u_i) - alpha_i log pi_i(u_i), u_i ~ pi_i, min over twins
        with torch.no_grad():
            alpha_i = self._alpha_i(b["obs"], b["state"])
            loc, scale = self._policy(b["obs"])
            action, u = self._sample(loc, scale)
            target = self._min_q(b["obs"], action) - alpha_i * self._log_prob(loc, scale, u)
        self._step(self.value_optimizer, F.mse_loss(self.value(b["obs"]), target))
        # eq. (11): alpha_i log pi_i(u_i) - Q_i(u_i), u_i = f(noise) reparameterised, critics frozen
        alpha_i = self._alpha_i(b["obs"], b["state"])
        loc, scale = self._policy(b["obs"])
        action, u = self._sample(loc, scale, reparameterised=True)
        log_pi = self._log_prob(loc, scale, u)
        frozen = [p for critic in self.critics for p in critic.parameters()]
        for p in frozen:
            p.requires_grad_(False)
        loss_actor = (alpha_i * log_pi - self._min_q(b["obs"], action)).mean()
        for p in frozen:
            p.requires_grad_(True)
        self._step(self.actor_optimizer, loss_actor)
        if self.log_alpha is not None:  # SAC's dual update toward the target team entropy
            log_pi_jt = log_pi.detach().sum(-2)
            self._step(self.alpha_optimizer, (-self.log_alpha * (log_pi_jt + self.target_entropy)).mean())
        self._target_update()


def tensors(batch) -> dict[str, torch.Tensor]:
    """The replay batch as the plain tensors the hand-written update reads."""
    plain = {
        "obs": batch["agents", "observation"], "state": batch["state"], "action": batch["agents", "action"],
        "next_obs": batch["next", "agents", "observation"], "next_state": batch["next", "state"],
        "reward": batch["next", "reward"], "terminated": batch["next", "terminated"],
    }
    if ("agents", "action_mask") in batch.keys(True):  # discrete
        plain.update(mask=batch["agents", "action_mask"], next_mask=batch["next", "agents", "action_mask"])
    return plain


def learner_and_batch(task: str):
    """The recipe's learner for ``task`` with one replay batch from its own collected data."""
    experiment, overrides = TASKS[task]
    cfg = recipe_config(experiment, ["trainer.enable_progress_bar=false", *overrides])
    torch.manual_seed(0)
    module, env = recipe_learner(cfg)
    attach_optimizers(module, cfg)
    module.before_updates(0)  # the temperature at frame 0
    envs = max(env.batch_size.numel(), 1)  # whole steps of the env's parallel copies
    frames = -(-module.collect.batch_size * 2 // envs) * envs
    collector = Collector(env, module.policy, frames_per_batch=frames, total_frames=frames)
    for data in collector:
        module.store(data)
    collector.shutdown()
    torch.manual_seed(1)
    return module, module.sample()


def _fop_parameters(module) -> list[torch.Tensor]:
    """The learner's trained parameters in the hand-written update's order (twins unstacked)."""
    loss = module.loss_module
    twins = [(lambda params, k=k: params[k]) if loss.num_qvalue_nets > 1 else (lambda params: params)
             for k in range(loss.num_qvalue_nets)]
    groups = [loss.actor_network_params, *(t(loss.qvalue_network_params) for t in twins),
              *(t(loss.mixer_params) for t in twins)]
    if loss.value_network is not None:
        groups.append(loss.value_network_params)
    return [p for params in groups for p in params.values(True, True)] + ([loss.log_alpha] if loss.learn_alpha else [])


def check_same_update(module, hand, batch) -> float:
    """Largest parameter difference after one update of each from the same state and seed."""
    saved = copy.deepcopy(module.loss_module.state_dict()), [copy.deepcopy(o.state_dict()) for o in module.optimizers()]
    hand_state = copy.deepcopy(hand)
    torch.manual_seed(2)
    module.update(batch)
    torch.manual_seed(2)
    hand_state.update(tensors(batch))
    fop = [p.detach().clone() for p in _fop_parameters(module)]
    ours = [p.detach() for p in hand_state.parameters()]
    module.loss_module.load_state_dict(saved[0])
    for optimizer, state in zip(module.optimizers(), saved[1]):
        optimizer.load_state_dict(state)
    if [a.shape for a in fop] != [b.shape for b in ours]:
        raise RuntimeError("the hand-written update does not hold the same parameters")
    return max((a - b).abs().max().item() for a, b in zip(fop, ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'task':<16}{'max |diff|':>12}{'fop ms':>10}{'hand ms':>10}{'fop / hand':>12}")
    for task in args.tasks:
        module, batch = learner_and_batch(task)
        hand = (HandWrittenDiscreteFOP if module.loss_module.discrete else HandWrittenContinuousFOP)(module)
        diff = check_same_update(module, hand, batch)
        plain = tensors(batch)
        module.update(batch), hand.update(plain)  # warm-up
        fop_times, hand_times = [], []
        for _ in range(args.rounds):  # interleaved: both see the same machine load
            fop_times.append(timed(lambda: module.update(batch), args.repeats))
            hand_times.append(timed(lambda: hand.update(plain), args.repeats))
        ratio = statistics.median(f / h for f, h in zip(fop_times, hand_times))
        print(f"{task:<16}{diff:>12.1e}{1e3 * statistics.median(fop_times):>10.2f}"
              f"{1e3 * statistics.median(hand_times):>10.2f}{ratio:>12.2f}")


if __name__ == "__main__":
    main()
