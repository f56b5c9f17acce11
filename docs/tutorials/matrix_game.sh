#!/usr/bin/env bash
# Tutorial 2: the matrix game of the paper's Tables 1-2. Run from the repository root:
# `bash docs/tutorials/matrix_game.sh` (about 55 s on one core). RUNS sets where runs go.
set -euo pipefail
RUNS=${RUNS:-outputs/tutorials}
mkdir -p "$RUNS"

# --8<-- [start:run]
# The paper's setting: 10k env frames, alpha annealed 1 -> 0.01 (Table 1b), seed 0.
python recipes/train.py seed=0 trainer.enable_progress_bar=false \
    hydra.run.dir="$RUNS/matrix_game"
# --8<-- [end:run]

# --8<-- [start:read]
python docs/tutorials/read_q_tables.py "$RUNS/matrix_game/summary.json"
# --8<-- [end:read]
