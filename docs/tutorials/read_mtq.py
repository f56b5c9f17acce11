"""Prints where each algorithm's greedy actions ended on MTQ (tutorial 3)."""

# --8<-- [start:read]
import json
import sys
from pathlib import Path

for algorithm in ("fop", "fop_linear", "fop_greedy"):
    run = Path(sys.argv[1]) / algorithm
    summary = json.loads((run / "summary.json").read_text())
    actions = ", ".join(f"{u:+.2f}" for u in summary["greedy_action"])
    print(f"{algorithm:10s}  greedy actions ({actions})  payoff {summary['greedy_payoff']:+.2f}  "
          f"path: {run / 'learning_path.png'}")
# --8<-- [end:read]
