#!/usr/bin/env bash
# Tutorial 5: configuring runs with Hydra. Run from the repository root: `bash docs/tutorials/hydra.sh`
# (about 95 s on one core; 1,000-frame runs: a demonstration, not results).
set -euo pipefail
RUNS=${RUNS:-outputs/tutorials}
mkdir -p "$RUNS"

# --8<-- [start:show]
# Print the composed config of an experiment without running it (Hydra's --cfg job);
# --package narrows it to one section.
python recipes/train.py +experiment=mtq --cfg job --package collect
# --8<-- [end:show]

# --8<-- [start:override]
# Any key can be overridden on the command line; an unknown key fails before anything runs.
python recipes/train.py collect.total_frames=1008 temperature.end=0.1 algorithm.lr_actor=0.001 \
    trainer.enable_progress_bar=false hydra.run.dir="$RUNS/override"
if python recipes/train.py collect.total_frame=2000 --cfg job > /dev/null 2>&1; then
    echo "a misspelt key should have failed"; exit 1
fi
# --8<-- [end:override]

# --8<-- [start:multirun]
# Three seeds with one multirun (-m): one run folder each under hydra.sweep.dir, then their
# mean and 95% band with recipes/plot.py.
python recipes/train.py -m seed=0,1,2 collect.total_frames=1008 trainer.enable_progress_bar=false \
    hydra.sweep.dir="$RUNS/seeds"
python recipes/plot.py "$RUNS/seeds" --metric eval/return --out "$RUNS/seeds.png"
# --8<-- [end:multirun]

# --8<-- [start:paper]
# The paper's form of FOP (eq. 7 mixer, V_i networks, alpha_i formula, learned dual alpha)
# instead of the authors' code's: the algorithm group, and no temperature schedule.
python recipes/train.py algorithm=fop_paper '~temperature' --cfg job --package algorithm
python recipes/train.py algorithm=fop_paper '~temperature' collect.total_frames=1008 \
    trainer.enable_progress_bar=false hydra.run.dir="$RUNS/paper_form"
# --8<-- [end:paper]
