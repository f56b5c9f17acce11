#!/usr/bin/env bash
# Tutorial 3: the differential game Max of Two Quadratics (paper sec. 5.1, Fig. 2-3). Run from the
# repository root: `bash docs/tutorials/differential_game.sh` (about 95 s on one core).
set -euo pipefail
RUNS=${RUNS:-outputs/tutorials}
mkdir -p "$RUNS"

# --8<-- [start:surface]
python docs/tutorials/mtq_surface.py "$RUNS/mtq_surface.png"
# --8<-- [end:surface]

# --8<-- [start:ablations]
# FOP and the two ablations of Fig. 3 in one Hydra multirun, one folder per algorithm. 3,000 env
# frames each to keep this page's check short: the paper's runs have 20,000 (drop the collect.* keys).
python recipes/train.py -m +experiment=mtq algorithm=fop,fop_linear,fop_greedy \
    collect.total_frames=3008 collect.init_random_frames=1000 trainer.enable_progress_bar=false \
    hydra.sweep.dir="$RUNS/mtq" 'hydra.sweep.subdir=${hydra:runtime.choices.algorithm}'
# --8<-- [end:ablations]

# --8<-- [start:read]
python docs/tutorials/read_mtq.py "$RUNS/mtq"
# --8<-- [end:read]
