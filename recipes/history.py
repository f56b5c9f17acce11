"""A resumed run's metrics as one history, in ``logs/metrics.csv`` (``logger=csv``), in
TensorBoard's event files (``logger=tensorboard``) and in one W&B run (``logger=wandb``).

At a resume, :func:`previous_history` sets the interrupted part's files aside (TensorBoard would
otherwise show the steps it logged after its checkpoint twice, CSVLogger would delete
metrics.csv) and returns its rows up to the checkpoint's env frame, with the row of the batch
that wrote the checkpoint (stored in the checkpoint, since a kill can land before that row is
written). :func:`continue_history` logs them again into the resumed run's logger, whose files then
hold every step once: the history up to the checkpoint, then the resumed part.

W&B keeps the history in its run, not in our files: :class:`WandbRunCheckpoint` stores the run's
id and the W&B step (``_step``) of its next row with every checkpoint, and a resume continues
that run rewound to the checkpoint (:func:`wandb_rewind`: ``wandb.init(id=..., resume_from=
"<id>?_step=<k>")``, W&B's run rewind), which drops the rows the interrupted part logged after
it; :func:`continue_history` then logs only the checkpoint batch's row. Rewind rather than
``resume="must"``: a resumed W&B run continues after the last row it holds, so the steps logged
between the checkpoint and the interruption would appear twice; only a rewind removes them.
Offline, wandb (0.31) writes the rewind into the part's own files and ``wandb sync`` applies it;
the W&B server must offer run rewind. A SIGKILL loses the rows wandb had not yet written (it
flushes its offline file every 15 s and stops with the process): those before the checkpoint
are then missing from the W&B run.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

Row = tuple[int, dict[str, float]]  # (logger step, metrics), as Logger.log_metrics takes them
WANDB_RUN_KEY = "wandb_run"  # in a checkpoint: {"id": the W&B run id, "step": the _step of its next row}


def set_aside(logger: str, logs: Path) -> list[Path]:
    """Renames the files ``logger`` wrote in ``logs``: ``metrics.csv`` to
    ``metrics.before_resume_<k>.csv``, ``events.out.tfevents.*`` to ``events.out.before_resume_<k>.*``
    (a name TensorBoard does not read), k = 1, 2, ... per resume. Returns the new paths, oldest first.

    Examples:
        >>> import tempfile
        >>> logs = Path(tempfile.mkdtemp())
        >>> _ = (logs / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
        >>> [p.name for p in set_aside("tensorboard", logs)], set_aside("tensorboard", logs)
        (['events.out.before_resume_1.1700000000.host.1.0'], [])
    """
    if logger == "csv":
        metrics, k = logs / "metrics.csv", 1 + len(list(logs.glob("metrics.before_resume_*.csv")))
        return [metrics.rename(logs / f"metrics.before_resume_{k}.csv")] if metrics.is_file() else []
    if logger == "tensorboard":
        k = 1 + len({p.name.split(".")[2] for p in logs.glob("events.out.before_resume_*")})
        files = sorted(logs.glob("events.out.tfevents.*"))  # the name starts with the writer's start time
        return [f.rename(f.with_name(f.name.replace("tfevents", f"before_resume_{k}", 1))) for f in files]
    return []


def read_rows(path: Path) -> list[Row]:
    """The rows logged in a metrics.csv or a TensorBoard event file, in the order they were logged.

    An event file holds one scalar per event: a row is a run of consecutive events of one step
    with different tags (a Lightning logger writes each ``log_metrics`` call's metrics in a row).
    """
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [(int(row["step"]), {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)})
                    for row in csv.DictReader(f)]
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    rows: list[Row] = []
    for event in EventFileLoader(str(path)).Load():  # (it reads scalars as the "scalars" plugin's tensors)
        values = {v.tag: float(make_ndarray(v.tensor)) for v in event.summary.value
                  if v.metadata.plugin_data.plugin_name == "scalars"}
        if not values:
            continue  # the file's version, hyperparameters
        if rows and rows[-1][0] == event.step and not values.keys() & rows[-1][1].keys():
            rows[-1][1].update(values)
        else:
            rows.append((event.step, values))
    return rows


def previous_history(logger: Logger, logs: Path, env_frames: int, pending: dict[str, Any] | None) -> list[Row]:
    """Sets the files the resumed run's kind of ``logger`` wrote before the resume aside
    (:func:`set_aside`; CSV and TensorBoard files, nothing for other loggers) and returns their rows
    up to the checkpoint's ``env_frames``, ending with ``pending``, the checkpoint's row of the batch
    that wrote it (``fop_modules.checkpointing.LOG_ROW_KEY``; None: no such row) where the files
    lack it. Those files already begin with the history of earlier parts, logged again."""
    kind = "csv" if isinstance(logger, CSVLogger) else "tensorboard" if isinstance(logger, TensorBoardLogger) else ""
    rows = [(step, metrics) for path in set_aside(kind, logs) for step, metrics in read_rows(path)
            if metrics.get("env_frames", float("inf")) <= env_frames]
    if pending is not None:
        step, metrics = pending["step"], pending["metrics"]
        rows = [r for r in rows if (r[0], r[1].keys()) != (step, metrics.keys())] + [(step, metrics)]
    return rows


def continue_history(logger: Logger, rows: list[Row]) -> None:
    """Logs ``rows`` (:func:`previous_history`) into the resumed run's new ``logger`` and writes them."""
    with warnings.catch_warnings():
        # the log folder holds the files set aside: nothing of them is deleted, whatever the warning says
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        for step, metrics in rows:
            logger.log_metrics(metrics, step=step)
    logger.save()


class WandbRunCheckpoint(Callback):
    """Stores, with every checkpoint, the W&B run's id and the W&B step (``_step``, one per
    logged row) its next row gets (:data:`WANDB_RUN_KEY`); nothing without a
    :class:`~lightning.pytorch.loggers.WandbLogger`. A checkpoint saved in ``on_train_batch_end``
    comes before that batch's row, so the rows up to the checkpoint are those below ``step``.

    Examples:
        >>> from types import SimpleNamespace
        >>> checkpoint, csv_only = {}, SimpleNamespace(loggers=[], is_global_zero=True)
        >>> WandbRunCheckpoint().on_save_checkpoint(csv_only, None, checkpoint)  # no W&B run: nothing
        >>> checkpoint
        {}
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers and trainer.is_global_zero:  # (other ranks hold no W&B run)
            run = loggers[0].experiment
            # max: wandb 0.31 reads run.step as 0 until a rewound run's first row
            checkpoint[WANDB_RUN_KEY] = {"id": run.id, "step": max(run.step, run.starting_step)}


def wandb_rewind(saved: dict[str, Any] | None) -> dict[str, Any]:
    """``wandb.init`` arguments (through ``WandbLogger(**...)``) that continue the W&B run a
    checkpoint stored (:class:`WandbRunCheckpoint`) rewound to that checkpoint: the rows the
    interrupted part logged after it are dropped, the next row gets its step. None (a checkpoint
    written without a W&B run): no arguments, a new W&B run.

    Examples:
        >>> wandb_rewind({"id": "a1b2c3d4", "step": 17})
        {'id': 'a1b2c3d4', 'resume': None, 'resume_from': 'a1b2c3d4?_step=16'}
        >>> wandb_rewind(None)
        {}
    """
    if saved is None:
        return {}
    # resume_from keeps the rows up to _step=k (none for k = -1) and logs on from k + 1;
    # resume=None: WandbLogger's default resume="allow" excludes resume_from
    return {"id": saved["id"], "resume": None, "resume_from": f"{saved['id']}?_step={saved['step'] - 1}"}
