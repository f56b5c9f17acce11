"""Tutorial 1: FOPLoss in your own TorchRL pipeline (VMAS, no Lightning, no Hydra).

Run from the repository root: `python docs/tutorials/own_pipeline.py` (about 14 s on one core).
"""

# --8<-- [start:env]
import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate

from fop_modules import FOPLoss, FOPMixer, LinearTemperature, networks
from fop_modules.envs import env_sizes, make_vmas_env

torch.manual_seed(0)
NUM_ENVS, MAX_STEPS = 8, 50  # 8 copies of the task simulated together, episodes of 50 steps
env = make_vmas_env("balance", num_envs=NUM_ENVS, max_steps=MAX_STEPS, seed=0)

sizes = env_sizes(env)  # read from the specs: agents, observation, state, action size and box
n_agents, obs_dim, state_dim, action_dim = sizes.n_agents, sizes.obs_dim, sizes.state_dim, sizes.action_dim
low, high = sizes.low, sizes.high
print(f"{n_agents} agents, observation {obs_dim}, action {action_dim} in [{low}, {high}], state {state_dim}")
# --8<-- [end:env]

# --8<-- [start:loss]
actor = networks.continuous_actor(n_agents, obs_dim, action_dim, low=low, high=high)
loss = FOPLoss(
    actor,
    networks.continuous_critic(n_agents, obs_dim, action_dim),  # Q_i(o_i, u_i)
    FOPMixer(n_agents, state_dim, action_dim, discrete_actions=False),  # eq. (7)
    action_space="continuous",
    value_network=networks.value_network(n_agents, obs_dim),  # V_i(o_i), eq. (10)
)
loss.make_value_estimator(gamma=0.99)  # one-step soft TD target of eq. (9)
target_updater = SoftUpdate(loss, tau=0.01)  # polyak averaging of the target critics and mixer
schedule = LinearTemperature(start=0.1, end=0.01, steps=3_000)  # alpha over env frames
# One optimiser per objective, with the recommended rates (loss.param_groups() lists which
# parameters each objective trains): a slow critic, a fast mixer in its own group, a fast actor.
optimizers = loss.make_optimizers()  # {"loss_qvalue": ..., "loss_value": ..., "loss_actor": ...}
# --8<-- [end:loss]

# --8<-- [start:data]
FRAMES_PER_BATCH, TOTAL_FRAMES = NUM_ENVS * MAX_STEPS, 4_000  # 10 batches: a smoke run, not a result
collector = Collector(env, actor, frames_per_batch=FRAMES_PER_BATCH, total_frames=TOTAL_FRAMES)
buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(TOTAL_FRAMES), batch_size=256)
# --8<-- [end:data]

# --8<-- [start:train]
frames = 0
for batch in collector:  # [E, T] frames from the current policy
    frames += batch.numel()
    buffer.extend(batch.reshape(-1))  # transitions
    loss.alpha = schedule(frames)  # a scheduled alpha is a buffer of the loss
    for _ in range(4):  # updates per collected batch
        losses = loss(buffer.sample())
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        # each objective reaches only its own parameters: one backward of the sum gives every
        # objective its own gradient, and each optimiser then steps (and clips) its own
        sum(losses[key] for key in optimizers).backward()
        for optimizer in optimizers.values():
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 10.0)
            optimizer.step()
        target_updater.step()
    reward = batch["next", "reward"].mean().item()
    print(
        f"frames {frames:5d}  reward {reward:+.3f}  alpha {losses['alpha'].item():.3f}  "
        f"loss_qvalue {losses['loss_qvalue'].item():.4f}  loss_actor {losses['loss_actor'].item():+.3f}  "
        f"q_jt {losses['q_jt'].item():+.3f}"
    )
collector.shutdown()
# --8<-- [end:train]
