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
import statistics

import torch
import torch.nn.functional as F
from torch import nn
from torchrl.collectors import Collector

from fop_modules.networks import AgentMLP
from learner_update import timed
from smac_shapes import attach_optimizers, recipe_config, recipe_learner

TASKS = {"matrix_game": ("matrix_game", [])}


def _materialised(module: nn.Module, params) -> nn.Module:
    """A copy of a loss's functional module (its parameters on the meta device) holding ``params``."""
    network = copy.deepcopy(module).to_empty(device="cpu")
    network.load_state_dict(dict(params.flatten_keys(".").items()))
    return network


def _plain(module: nn.Module, params) -> AgentMLP:
    """The AgentMLP of a loss's functional network, as a plain module holding ``params``."""
    return next(m for m in _materialised(module, params).modules() if isinstance(m, AgentMLP))


class HandWrittenDiscreteFOP:
    """FOP's update (Algorithm 1: eq. 9, eq. 11, then the targets) for discrete actions with the
    analytic soft V_i and a scheduled alpha, written with plain tensors, on copies of ``module``'s
    networks, optimisers and settings."""

    def __init__(self, module) -> None:
        loss, optim = module.loss_module, module.optim
        self.k = loss.num_qvalue_nets
        twin = (lambda params, k: params[k]) if self.k > 1 else (lambda params, k: params)
        self.actor = _plain(loss.actor_network, loss.actor_network_params)
        self.critics = [_plain(loss.qvalue_network, twin(loss.qvalue_network_params, k)) for k in range(self.k)]
        self.target_critics = [_plain(loss.qvalue_network, twin(loss.target_qvalue_network_params, k))
                               for k in range(self.k)]
        self.mixers = [_materialised(loss.mixer, twin(loss.mixer_params, k)) for k in range(self.k)]
        self.target_mixers = [_materialised(loss.mixer, twin(loss.target_mixer_params, k)) for k in range(self.k)]
        critic_params = [p for c in self.critics for p in c.parameters()]
        mixer_params = [p for m in self.mixers for p in m.parameters()]
        groups = ([{"params": critic_params, "lr": optim.lr_qvalue}, {"params": mixer_params, "lr": optim.lr_mixer}]
                  if optim.lr_mixer is not None else [{"params": critic_params + mixer_params, "lr": optim.lr_qvalue}])
        self.q_optimizer = torch.optim.Adam(groups, eps=optim.eps)
        self.actor_optimizer = torch.optim.Adam([{"params": list(self.actor.parameters()), "lr": optim.lr_actor}],
                                                eps=optim.eps)
        self.alpha = float(loss.alpha_value)
        self.gamma = loss.value_estimator.gamma.item()
        self.tau, self.clip = optim.tau, optim.grad_clip
        self.mean_entropy = loss.entropy_reduction == "mean"

    def _policy(self, obs, mask):
        log_probs = torch.log_softmax(self.actor(obs).masked_fill(~mask, -torch.inf), -1)
        return log_probs.exp(), torch.where(mask, log_probs, torch.zeros_like(log_probs))

    def _soft_value(self, q, mask):  # V_i = alpha logsumexp(Q_i / alpha) over available actions
        return self.alpha * torch.logsumexp(q.masked_fill(~mask, -torch.inf) / self.alpha, -1, keepdim=True)

    def _step(self, optimizer, loss) -> None:
        optimizer.zero_grad()
        loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.clip)
        optimizer.step()

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
            entropy = log_pi.mean(-2) if self.mean_entropy else log_pi.sum(-2)
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
        with torch.no_grad():  # polyak target update
            for online, target in [*zip(self.critics, self.target_critics), *zip(self.mixers, self.target_mixers)]:
                for p, tp in zip(online.parameters(), target.parameters()):
                    tp.lerp_(p, self.tau)

    def parameters(self) -> list[torch.Tensor]:
        return [p for net in (self.actor, *self.critics, *self.mixers) for p in net.parameters()]


def tensors(batch) -> dict[str, torch.Tensor]:
    """The replay batch as the plain tensors the hand-written update reads."""
    return {
        "obs": batch["agents", "observation"], "mask": batch["agents", "action_mask"],
        "state": batch["state"], "action": batch["agents", "action"],
        "next_obs": batch["next", "agents", "observation"], "next_mask": batch["next", "agents", "action_mask"],
        "next_state": batch["next", "state"], "reward": batch["next", "reward"],
        "terminated": batch["next", "terminated"],
    }


def learner_and_batch(task: str):
    """The recipe's learner for ``task`` with one replay batch from its own collected data."""
    experiment, overrides = TASKS[task]
    cfg = recipe_config(experiment, ["trainer.enable_progress_bar=false", *overrides])
    torch.manual_seed(0)
    module, env = recipe_learner(cfg)
    attach_optimizers(module, cfg)
    module.before_updates(0)  # the temperature at frame 0
    collector = Collector(env, module.policy, frames_per_batch=module.collect.batch_size * 2,
                          total_frames=module.collect.batch_size * 2)
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
    return [p for params in groups for p in params.values(True, True)]


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
    print(f"{'task':<14}{'max |diff|':>12}{'fop ms':>10}{'hand ms':>10}{'fop / hand':>12}")
    for task in args.tasks:
        module, batch = learner_and_batch(task)
        hand = HandWrittenDiscreteFOP(module)
        diff = check_same_update(module, hand, batch)
        plain = tensors(batch)
        module.update(batch), hand.update(plain)  # warm-up
        fop_times, hand_times = [], []
        for _ in range(args.rounds):  # interleaved: both see the same machine load
            fop_times.append(timed(lambda: module.update(batch), args.repeats))
            hand_times.append(timed(lambda: hand.update(plain), args.repeats))
        ratio = statistics.median(f / h for f, h in zip(fop_times, hand_times))
        print(f"{task:<14}{diff:>12.1e}{1e3 * statistics.median(fop_times):>10.2f}"
              f"{1e3 * statistics.median(hand_times):>10.2f}{ratio:>12.2f}")


if __name__ == "__main__":
    main()
