"""Tutorial: FOP on your own one-step cooperative game with the ONE_STEP preset (plain TorchRL loop).

Run from the repository root: `python docs/tutorials/one_step_preset.py` (about 40 s on one core).
"""

# --8<-- [start:game]
import itertools

import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import ExplorationType, set_exploration_type

from fop_modules import FOPLoss, FOPMixer, networks, presets
from fop_modules.envs import MatrixGameEnv, env_sizes
from fop_modules.reward_scaling import to_reward_units

torch.manual_seed(0)
# Your payoff table, one dimension per agent: here the paper's non-monotonic game at ten times
# its scale and shifted by +50. Action A pays most only if both agents take it.
PAYOFF = torch.tensor([[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 0.0]]) * 10 + 50
game = MatrixGameEnv(PAYOFF.tolist(), num_envs=16)  # 16 copies of the game per step
preset = presets.ONE_STEP
env = preset.standardise_rewards(game)  # train on the reward centred and scaled to std 7
print(f"reward standardised: (r - {env.transform.loc.item():.1f}) / {env.transform.scale.item():.2f}")
# --8<-- [end:game]

# --8<-- [start:loss]
sizes = env_sizes(game)  # from the game's specs: 2 agents, 3 actions, observation and state sizes
n_agents, n_actions, obs_dim, state_dim = sizes.n_agents, sizes.action_dim, sizes.obs_dim, sizes.state_dim
actor = networks.discrete_actor(n_agents, obs_dim, n_actions)
loss = FOPLoss(
    actor,
    networks.discrete_critic(n_agents, obs_dim, n_actions),
    FOPMixer(n_agents, state_dim, n_actions, **preset.mixer_kwargs()),
    action_space="discrete",
    **preset.loss_kwargs(),  # one critic, the paper's sum over agents in log pi_jt
)
preset.make_value_estimator(loss)  # one-step TD target of eq. (9)
optimizers = preset.make_optimizers(loss)  # Adam: critic 3e-4, mixer 3e-2 (own group), actor 3e-3
target_updater = preset.make_target_updater(loss)  # polyak, tau 0.01
# --8<-- [end:loss]

# --8<-- [start:train]
TOTAL_FRAMES = preset.total_frames  # 20k: alpha anneals 1 -> 0.01 over the first 10k, then stays at 0.01
collector = Collector(env, actor, frames_per_batch=preset.frames_per_batch, total_frames=TOTAL_FRAMES)
buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(TOTAL_FRAMES), batch_size=preset.batch_size)
frames = 0
for batch in collector:
    frames += batch.numel()
    buffer.extend(batch.reshape(-1))
    loss.alpha = preset.temperature(frames)
    if len(buffer) < preset.batch_size:
        continue
    for _ in range(preset.updates_per_batch):
        losses = loss(buffer.sample())
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        sum(losses[key] for key in optimizers).backward()  # each objective reaches only its own parameters
        for optimizer in optimizers.values():
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, preset.optim.grad_clip)
            optimizer.step()
        target_updater.step()
collector.shutdown()
# --8<-- [end:train]

# --8<-- [start:read]
with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
    greedy = actor(game.reset())["agents", "action"][0]  # each agent's argmax of its own policy
    # every joint action, agent by agent over its own actions (a table need not be square)
    joint = torch.tensor(list(itertools.product(*(range(n) for n in PAYOFF.shape))))
    td = game.reset()[:1].expand(len(joint)).clone()
    td["agents", "action"] = joint
    q_jt = to_reward_units(loss.joint_q(td)["q_jt"].squeeze(-1), env.transform)  # back to payoff units
print(f"greedy joint action {greedy.tolist()}, payoff {PAYOFF[tuple(greedy)].item():.0f}")
for action, q, r in zip(joint.tolist(), q_jt.tolist(), PAYOFF.reshape(-1).tolist()):
    print(f"  {action}: Q_jt {q:7.1f}   payoff {r:5.0f}")
# --8<-- [end:read]
