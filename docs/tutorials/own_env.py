"""Tutorial: FOP on TorchRL multi-agent envs the project does not wrap (a raw VMAS scenario and
PettingZoo's MPE2 simple_spread), trained and evaluated greedily in a plain loop.

Run from the repository root: `python docs/tutorials/own_env.py` (about 10 s on one core; the
PettingZoo part needs `pip install -e ".[pettingzoo]"`).
"""

# --8<-- [start:vmas]
import torch
from torchrl.envs import Compose, FlattenObservation, StepCounter, TransformedEnv, VmasEnv
from torchrl.envs.utils import MarlGroupMapType

from fop_modules.envs import TeamReward

torch.manual_seed(0)


def make_wheel(num_envs: int, max_steps: int = 50) -> TransformedEnv:
    """VMAS's "wheel" (agents turn a wheel at a target speed; no preset here) with FOP's keys."""
    env = VmasEnv(
        "wheel",
        num_envs=num_envs,
        continuous_actions=True,
        max_steps=None,  # VMAS would call its time limit "terminated": StepCounter truncates instead
        group_map=MarlGroupMapType.ALL_IN_ONE_GROUP,  # every agent in the group "agents"
        seed=0,
    )
    return TransformedEnv(env, Compose(
        # the mixer's global state: all observations [E, N, obs] -> [E, N * obs]
        FlattenObservation(-2, -1, in_keys=[("agents", "observation")], out_keys=["state"]),
        TeamReward(),  # ("agents", "reward") [E, N, 1] -> the team "reward" [E, 1] (their mean)
        StepCounter(max_steps=max_steps),  # "truncated" after max_steps, "terminated" stays VMAS's
    ))
# --8<-- [end:vmas]


# --8<-- [start:pettingzoo]
def make_simple_spread(max_cycles: int = 25) -> TransformedEnv:
    """MPE2's cooperative simple_spread (3 agents cover 3 landmarks; discrete actions) with FOP's keys."""
    from mpe2 import simple_spread_v3
    from torchrl.envs import PettingZooWrapper

    env = PettingZooWrapper(  # TorchRL's PettingZooEnv, given the env itself (MPE now lives in mpe2)
        simple_spread_v3.parallel_env(N=3, max_cycles=max_cycles, continuous_actions=False),
        group_map=MarlGroupMapType.ALL_IN_ONE_GROUP,
        seed=0,
    )
    # its root "done"/"terminated"/"truncated" [1] are already the team's (max_cycles truncates)
    return TransformedEnv(env, Compose(
        FlattenObservation(-2, -1, in_keys=[("agents", "observation")], out_keys=["state"]),
        TeamReward(),
    ))
# --8<-- [end:pettingzoo]


# --8<-- [start:fop]
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.objectives import SoftUpdate

from fop_modules import FOPLoss, FOPMixer, LinearTemperature, networks
from fop_modules.envs import env_sizes
from fop_modules.evaluation import first_episodes


def train_fop(env, eval_env, total_frames: int, frames_per_batch: int, eval_steps: int) -> float:
    """FOP on any env with the keys above, sized from its specs; returns the greedy team return."""
    sizes = env_sizes(env)  # from the specs of ("agents", "observation"), "state", ("agents", "action")
    n_agents, obs_dim, state_dim = sizes.n_agents, sizes.obs_dim, sizes.state_dim
    if sizes.discrete:  # softmax actors, analytic soft V_i
        n_actions = sizes.action_dim
        actor = networks.discrete_actor(n_agents, obs_dim, n_actions, masked=False)  # no action mask here
        loss = FOPLoss(actor, networks.discrete_critic(n_agents, obs_dim, n_actions),
                       FOPMixer(n_agents, state_dim, n_actions), action_space="discrete",
                       num_actions=n_actions, num_qvalue_nets=1)
    else:  # continuous: tanh-Gaussian actors, V_i networks (eq. 10)
        action_dim = sizes.action_dim
        actor = networks.continuous_actor(n_agents, obs_dim, action_dim, low=sizes.low, high=sizes.high)
        loss = FOPLoss(actor, networks.continuous_critic(n_agents, obs_dim, action_dim),
                       FOPMixer(n_agents, state_dim, action_dim, discrete_actions=False),
                       action_space="continuous", value_network=networks.value_network(n_agents, obs_dim),
                       num_qvalue_nets=1)
    loss.make_value_estimator(gamma=0.99)
    target_updater = SoftUpdate(loss, tau=0.01)
    schedule = LinearTemperature(start=0.1, end=0.01, steps=total_frames)
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-4)
    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=total_frames)
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(total_frames), batch_size=128)
    frames = 0
    for batch in collector:
        frames += batch.numel()
        buffer.extend(batch.reshape(-1))
        loss.alpha = schedule(frames)
        for _ in range(4):
            losses = loss(buffer.sample())
            optimizer.zero_grad()
            sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
            optimizer.step()
            target_updater.step()
        print(f"  frames {frames:5d}  reward {batch['next', 'reward'].mean().item():+.3f}  "
              f"loss_qvalue {losses['loss_qvalue'].item():.4f}")
    collector.shutdown()
    # Greedy evaluation in your own loop: the policies' deterministic actions (argmax, tanh(mean))
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        rollout = eval_env.rollout(eval_steps, actor, break_when_any_done=False)
    if not eval_env.batch_size:  # one game: [T] -> [1, T]
        rollout = rollout.unsqueeze(0)
    returns, ended, _ = first_episodes(rollout)  # each game's first episode
    print(f"  greedy return {returns.mean().item():+.3f} over {returns.numel()} episode(s), "
          f"{int(ended.sum())} ended")
    return returns.mean().item()
# --8<-- [end:fop]


# --8<-- [start:run]
print("VMAS wheel (raw VmasEnv)")
train_fop(make_wheel(num_envs=8), make_wheel(num_envs=4), total_frames=1_600, frames_per_batch=400, eval_steps=50)
print("MPE2 simple_spread (PettingZoo)")
train_fop(make_simple_spread(), make_simple_spread(), total_frames=400, frames_per_batch=100, eval_steps=25)
# --8<-- [end:run]
