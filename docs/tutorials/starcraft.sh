#!/usr/bin/env bash
# Tutorial 4: StarCraft. Run from the repository root: `bash docs/tutorials/starcraft.sh`
# (about 50 s on one core; the SMAX part needs `pip install -e ".[smax]"`).
set -euo pipefail
RUNS=${RUNS:-outputs/tutorials}
mkdir -p "$RUNS"

# --8<-- [start:check]
python docs/tutorials/check_starcraft.py MMM  # more map names: one check each
# --8<-- [end:check]

# --8<-- [start:fake]
# The MMM pipeline (GRU actor, episode replay, TD(lambda), win rate) on the stand-in game; 600
# frames with small batches so that this page's check stays short.
python recipes/train.py +experiment=smac_mmm env.backend=fake \
    collect.total_frames=600 collect.warmup_frames=150 collect.batch_size=4 \
    evaluation.interval=300 evaluation.episodes=2 trainer.enable_progress_bar=false \
    hydra.run.dir="$RUNS/smac_mmm_fake"
# --8<-- [end:fake]

# --8<-- [start:smax]
# SMAX 3m, no game needed: 2,000 frames here; the experiment's own 500k frames learn to win
# about half of the battles (docs/results.md).
python recipes/train.py +experiment=smax_3m \
    collect.total_frames=2000 collect.warmup_frames=400 collect.batch_size=8 \
    evaluation.interval=1000 evaluation.episodes=8 trainer.enable_progress_bar=false \
    hydra.run.dir="$RUNS/smax_3m"
python -m json.tool "$RUNS/smax_3m/summary.json"  # env_frames, final_eval_win_rate, ...
# --8<-- [end:smax]
