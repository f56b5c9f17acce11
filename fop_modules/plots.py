"""Figures of a run: the learning curve, the matrix game's Q tables, the MTQ learning path."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = [
    "learning_curve",
    "matrix_game_tables",
    "differential_game_path",
    "matrix_game_panels",
    "differential_game_panels",
]

ACTION_NAMES = "ABCDEFGHIJ"


def learning_curve(history: Sequence[tuple], path: Path, title: str = "") -> Path:
    """Greedy evaluation return against env frames, from ``GreedyEvaluation.history``."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    frames = [h[0] for h in history]
    returns = [h[1] for h in history]
    ax.plot(frames, returns, marker="o", ms=3)
    ax.set_xlabel("env frames")
    ax.set_ylabel("greedy evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _heatmap(ax, table: torch.Tensor, title: str, vmin: float, vmax: float) -> None:
    names = ACTION_NAMES[: table.shape[0]], ACTION_NAMES[: table.shape[1]]
    ax.imshow(table, cmap="RdYlGn", vmin=vmin, vmax=vmax)
    for (r, c), value in zip(
        [(r, c) for r in range(table.shape[0]) for c in range(table.shape[1])], table.flatten()
    ):
        ax.text(c, r, f"{round(float(value), 1) + 0.0:.1f}", ha="center", va="center", fontsize=11)
    ax.set_xticks(range(len(names[1])), list(names[1]))
    ax.set_yticks(range(len(names[0])), list(names[0]))
    ax.set_xlabel("agent 2 action")
    ax.set_ylabel("agent 1 action")
    ax.set_title(title)


def matrix_game_tables(tables: dict, payoff: torch.Tensor, path: Path) -> Path | None:
    """The payoff beside the learned Q_jt (2-agent games), Q_i in the caption (paper Table 1);
    None without a Q_jt (e.g. MASAC) or for more than 2 agents."""
    if "q_jt" not in tables:
        return None  # nothing to set beside the payoff; summary.json has Q_i
    q_jt = torch.tensor(tables["q_jt"])
    if q_jt.dim() != 2:
        return None  # a table per agent pair would be needed; summary.json has the numbers
    vmin, vmax = float(payoff.min()), float(payoff.max())
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    _heatmap(axes[0], payoff, "payoff", vmin, vmax)
    _heatmap(axes[1], q_jt, "learned $Q_{jt}$", vmin, vmax)
    greedy = tables["greedy_joint_action"]
    r, c = greedy
    axes[1].add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=3, ec="black"))
    q_text = "   ".join(
        f"$Q_{i + 1}$ = [" + ", ".join(f"{q:.1f}" for q in row) + "]"
        for i, row in enumerate(tables["q_i"])
    )
    fig.suptitle(f"{q_text}\ngreedy joint action ({ACTION_NAMES[r]}, {ACTION_NAMES[c]}) boxed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _payoff_surface(ax, env, fig) -> None:
    """The unscaled payoff max(f1, f2) of a 2-agent differential game, filled contours."""
    bound = float(env.action_bound)
    grid = torch.linspace(-bound, bound, 201)
    u1, u2 = torch.meshgrid(grid, grid, indexing="xy")
    surface = env.payoff(torch.stack([u1, u2], -1))  # [201, 201]
    contour = ax.contourf(u1, u2, surface, levels=30, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="payoff max(f1, f2)")
    ax.set_xlabel("agent 1 action $u_1$")
    ax.set_ylabel("agent 2 action $u_2$")
    ax.set_xlim(-bound, bound)
    ax.set_ylim(-bound, bound)


def differential_game_path(env, history: Sequence[tuple], path: Path) -> Path | None:
    """The unscaled payoff surface of a 2-agent differential game with the greedy actions' path."""
    if env.n_agents != 2:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    _payoff_surface(ax, env, fig)
    points = torch.tensor([h[2] for h in history]).reshape(len(history), -1)
    if len(points):
        ax.plot(points[:, 0], points[:, 1], "-o", color="white", ms=3, lw=1, label="greedy actions")
        ax.plot(*points[0], "s", color="orange", ms=8, label="start (frame 0)")
        ax.plot(*points[-1], "*", color="red", ms=14, label="final")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("learning path over the reward surface")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def matrix_game_panels(runs: dict[str, list[dict]], payoff: torch.Tensor, path: Path) -> Path:
    """Paper Table 1 style, several algorithms: the payoff, then per algorithm the learned Q_jt
    averaged over its seeds, titled with how many seeds chose the optimal joint action.

    Args:
        runs: algorithm name -> the summary.json dicts of its seeds (2-agent matrix games).
        payoff: the game's payoff table ``[n_1, n_2]``.
        path: the PNG to write.
    """
    optimum = list(torch.unravel_index(payoff.argmax(), payoff.shape))
    optimum = [int(i) for i in optimum]
    vmin, vmax = float(payoff.min()), float(payoff.max())
    panels = 1 + len(runs)
    ncols = min(4, panels)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 4.3 * nrows), squeeze=False,
                             layout="constrained")
    axes = axes.flatten()
    for ax in axes[panels:]:
        ax.axis("off")
    _heatmap(axes[0], payoff, "payoff", vmin, vmax)
    for ax, (name, summaries) in zip(axes[1:], runs.items()):
        hits = sum(s["greedy_joint_action"] == optimum for s in summaries)
        title = f"{name}\noptimum in {hits}/{len(summaries)} seeds"
        if all("q_jt" in s for s in summaries):
            _heatmap(ax, torch.tensor([s["q_jt"] for s in summaries]).mean(0), title, vmin, vmax)
        else:  # a method without a joint action value (MASAC): where the seeds' greedy actions end
            counts = torch.zeros(payoff.shape)
            for s in summaries:
                counts[tuple(s["greedy_joint_action"])] += 1
            _heatmap(ax, counts, f"{name}: no $Q_{{jt}}$; seeds per greedy\njoint action, optimum in {hits}/{len(summaries)}",
                     0, len(summaries))
    fig.suptitle("learned $Q_{jt}$ (joint action value), mean over seeds")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def differential_game_panels(runs: dict[str, list[dict]], env, path: Path, tolerance: float = 0.5) -> Path:
    """Paper Figure 2 style, several algorithms: per algorithm the reward surface with every
    seed's path of greedy actions, titled with how many seeds end within ``tolerance`` of the
    global optimum in every coordinate.

    Args:
        runs: algorithm name -> the summary.json dicts of its seeds (paths from ``eval_history``
            where present; the final greedy actions always).
        env (DifferentialGameEnv): the 2-agent game they ran on.
        path: the PNG to write.
        tolerance: distance per coordinate that counts as reaching the optimum.
    """
    if env.n_agents != 2:
        raise ValueError(f"differential_game_panels draws 2-agent games, got {env.n_agents} agents")
    optimum, _ = env.global_optimum()
    ncols = min(3, len(runs))
    nrows = -(-len(runs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.4 * nrows), squeeze=False,
                             layout="constrained")
    axes = axes.flatten()
    for ax in axes[len(runs):]:
        ax.axis("off")
    for ax, (name, summaries) in zip(axes, runs.items()):
        _payoff_surface(ax, env, fig)
        for summary in summaries:
            history = summary.get("eval_history")  # absent from summaries of older runs
            if history:
                points = torch.tensor([h[2] for h in history]).reshape(-1, 2)
                ax.plot(points[:, 0], points[:, 1], "-", color="white", lw=0.8, alpha=0.8)
                ax.plot(*points[0], "s", color="orange", ms=7)
            ax.plot(*summary["greedy_action"], "*", color="red", ms=11)
        hits = sum(
            all(abs(u - o) < tolerance for u, o in zip(s["greedy_action"], optimum)) for s in summaries
        )
        ax.set_title(f"{name}: {hits}/{len(summaries)} seeds reach the optimum")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
