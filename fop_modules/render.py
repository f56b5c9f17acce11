"""Watch a team: one greedy episode as video frames, written as a GIF or an MP4.

:func:`episode_frames` plays one episode with the policy's deterministic action in the first
copy of a VMAS env (frames from VMAS's own renderer, ``render(mode="rgb_array")``) or of an
:class:`~fop_modules.envs.SMAXEnv` (frames from JaxMARL's SMAX visualiser, which re-plays each
env step's sub-steps so that units move smoothly and attacks are drawn; it needs the
heuristic enemy, whose actions it can recompute). :func:`write_video` writes the frames with
imageio (``pip install -e ".[render]"``: imageio for GIFs, PyAV for MP4s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import EnvBase, ExplorationType, TransformedEnv, set_exploration_type
from torchrl.envs.libs.vmas import VmasEnv

from fop_modules.envs.smax import SMAXEnv
from fop_modules.optional import require

__all__ = ["episode_frames", "write_video", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".gif", ".mp4")
FPS = {"vmas": 10, "smax": 16}  # VMAS: one frame per env step; SMAX: 8 sub-steps per env step
AGENT_KEY = ("agents", "action")


@torch.no_grad()
def _play(env: EnvBase, policy: nn.Module, max_steps: int, before_step: Callable[[TensorDictBase], None]) -> int:
    """Plays the first episode of ``env`` greedily (at most ``max_steps`` steps), calling
    ``before_step(td)`` with each step's input (the action included); returns the steps played."""
    steps = 0
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for steps in range(1, max_steps + 1):
            td = policy(td)
            before_step(td)
            td, next_td = env.step_and_maybe_reset(td)
            if td.get(("next", "done"))[0].any():
                break
            td = next_td
    return steps


def _vmas_frames(env: EnvBase, game: VmasEnv, policy: nn.Module, max_steps: int) -> list[np.ndarray]:
    def frame() -> np.ndarray:
        return np.asarray(game._env.render(mode="rgb_array", env_index=0))  # [H, W, 3] uint8

    frames: list[np.ndarray] = []
    _play(env, policy, max_steps, lambda td: frames.append(frame()))
    frames.append(frame())  # after the last step
    return frames


def _smax_frames(env: EnvBase, game: SMAXEnv, policy: nn.Module, max_steps: int) -> list[np.ndarray]:
    jax_env = game.jax_env
    if not hasattr(jax_env, "heuristic_policy"):
        raise ValueError(
            "rendering a SMAX battle needs the heuristic enemy (SMAXEnv(heuristic_enemy=True)): JaxMARL's "
            "visualiser recomputes the enemies' actions, which random enemies do not allow"
        )
    jax = require("jax", needed_for="rendering a SMAX battle", extra="smax")
    viz_module = require("jaxmarl.viz.visualizer", needed_for="rendering a SMAX battle", extra="smax")
    key = jax.random.PRNGKey(0)  # the visualiser's sub-steps; the heuristic enemy is deterministic
    sequence = []  # (key, state before the step, the allies' actions) per env step

    def record(td: TensorDictBase) -> None:
        action = td.get(AGENT_KEY)[0].to(torch.int32).tolist()  # first copy, [N]
        actions = {f"ally_{i}": jax.numpy.int32(a) for i, a in enumerate(action)}
        sequence.append((key, game.jax_state(0), actions))

    _play(env, policy, max_steps, record)
    import matplotlib.pyplot as plt  # after jaxmarl: the visualiser makes its own figure

    viz = viz_module.SMAXVisualizer(jax_env, sequence)
    viz.expand_state_seq()
    viz.init()
    frames = []
    for i in range(len(viz.state_seq)):
        viz.update(i)
        viz.fig.canvas.draw()
        frames.append(np.asarray(viz.fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(viz.fig)
    return frames


def episode_frames(env: EnvBase, policy: nn.Module, max_steps: int) -> tuple[list[np.ndarray], int]:
    """One greedy episode in the first copy of ``env`` as RGB frames, and their frame rate.

    Args:
        env: a VMAS env (:func:`~fop_modules.envs.make_vmas_env`, or TorchRL's ``VmasEnv`` with
            any transforms) or an :class:`~fop_modules.envs.SMAXEnv` (transforms allowed).
        policy: the TorchRL policy; its deterministic mode is played.
        max_steps: step limit of the episode.

    Returns:
        ``(frames, fps)``: ``[H, W, 3]`` uint8 arrays and the frames per second to play them at.

    Raises:
        ValueError: for an env that is neither (the matrix and differential games and SMAC
            have no renderer here), or random SMAX enemies.

    Examples:
        >>> from fop_modules import networks
        >>> from fop_modules.envs import make_vmas_env
        >>> env = make_vmas_env("balance", num_envs=1, max_steps=3, seed=0)
        >>> actor = networks.continuous_actor(3, 16, 2, low=-1.0, high=1.0)
        >>> frames, fps = episode_frames(env, actor, max_steps=3)
        >>> len(frames), frames[0].dtype, frames[0].shape[-1], fps
        (4, dtype('uint8'), 3, 10)
    """
    game = env.base_env if isinstance(env, TransformedEnv) else env
    if isinstance(game, VmasEnv):
        return _vmas_frames(env, game, policy, max_steps), FPS["vmas"]
    if isinstance(game, SMAXEnv):
        return _smax_frames(env, game, policy, max_steps), FPS["smax"]
    raise ValueError(
        f"rendering is for VMAS and SMAX envs; this one is a {type(game).__name__} "
        "(evaluate it without --render)"
    )


def write_video(frames: list[np.ndarray], path: str | Path, fps: int) -> Path:
    """Writes ``frames`` (``[H, W, 3]`` uint8) as a looping GIF or an H.264 MP4, by ``path``'s suffix.

    Examples:
        >>> import tempfile
        >>> frames = [np.full((16, 16, 3), v, dtype=np.uint8) for v in (0, 255)]
        >>> path = write_video(frames, Path(tempfile.mkdtemp()) / "x.gif", fps=2)
        >>> path.stat().st_size > 0
        True
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"the video must end in one of {VIDEO_SUFFIXES}, got {path.name!r}")
    if not frames:
        raise ValueError("no frames to write")
    iio = require("imageio.v3", needed_for="writing a video", extra="render")
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack(frames)  # [T, H, W, 3]
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, stack, duration=1000 / fps, loop=0)
    else:
        require("av", needed_for="writing an MP4", extra="render")
        stack = stack[:, : stack.shape[1] // 2 * 2, : stack.shape[2] // 2 * 2]  # H.264: even sizes
        iio.imwrite(path, stack, plugin="pyav", fps=fps, codec="libx264")
    return path
