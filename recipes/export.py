"""Export a run's decentralised actor: `python recipes/export.py <run dir> [--format onnx|torchscript] [--out FILE]`.

Reads top to bottom: the run's config.yaml and checkpoints/last.ckpt -> its trained policy
(recipes/evaluate.py's load_run, which rebuilds the networks with recipes/train.py's builders)
-> one agent's greedy step as a module of plain tensors (fop_modules.export.AgentPolicy: the
observation, the agent's index, its action mask and, for the GRU actor, its last action and
hidden state in; the greedy action, the probabilities, Q-values or Gaussian parameters and the
next hidden state out) -> an ONNX file (``pip install -e ".[export]"``) or TorchScript, with a
dynamic batch dimension, and beside it ``<file>.json`` naming its inputs and outputs. Every
agent runs the same file with its own index (the agents share their parameters).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import evaluate  # recipes/evaluate.py: load_run
import train  # recipes/train.py: USER_ERRORS
from fop_modules.export import FORMATS, AgentPolicy, export_actor

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def export(run_dir: Path, fmt: str = "onnx", out: Path | None = None, checkpoint: Path | None = None) -> dict:
    """Writes the run's per-agent actor; returns what ``<file>.json`` holds."""
    cfg, policy, _ = evaluate.load_run(run_dir, checkpoint)
    agent = AgentPolicy(policy)
    path = export_actor(agent, out or run_dir / "export" / f"actor{SUFFIX[fmt]}", fmt)
    example = agent.example_inputs(batch=1)
    info = {
        "file": str(path), "format": fmt, "run": str(run_dir), "algorithm": cfg.algorithm.name,
        "actor": agent.kind, "n_agents": agent.n_agents, "n_actions": agent.n_actions,
        "inputs": {name: {"shape": ["B", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}
                   for name, t in zip(agent.input_names, example)},
        "outputs": agent.output_names,
    }
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="outputs/<name>/<time>_seed<seed> of recipes/train.py")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default onnx")
    parser.add_argument("--out", type=Path, default=None, help="default: <run dir>/export/actor.onnx (.pt)")
    parser.add_argument("--checkpoint", type=Path, default=None, help=f"default: <run dir>/{evaluate.CHECKPOINT}")
    args = parser.parse_args(argv)
    try:
        info = export(args.run_dir, args.format, args.out, args.checkpoint)
    except (*train.USER_ERRORS, ValueError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    inputs = ", ".join(f"{name} {spec['shape']} {spec['dtype']}" for name, spec in info["inputs"].items())
    print(f"{info['algorithm']} {info['actor']} actor, {info['n_agents']} agents sharing it\n"
          f"inputs: {inputs}\noutputs: {', '.join(info['outputs'])}\nwrote {info['file']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
