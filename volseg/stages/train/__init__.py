"""Train a U-Net on random augmented patches, with validation, checkpoints and exact resume.

Outputs (for ``-o MODEL.pt``)
-----------------------------
``MODEL.pt``
    The best model by validation V_rand (the final one when nothing is held out).
``MODEL.last.pt``
    The last checkpoint: weights plus the training state (optimizer, step, RNG states, best
    score, elapsed time) that ``--resume`` continues from.
``MODEL.log.jsonl``
    One JSON object per line: every step (``"kind": "step"``) and every validation
    (``"kind": "val"``).
``MODEL.curves.png``
    Loss and validation metrics against the step, redrawn at each validation.
``MODEL.config.toml``
    The resolved configuration, readable again with ``--config``.

Reproducibility
---------------
Patch ``n = step * batch_size + i`` comes from ``default_rng([seed, n])`` (see
:mod:`volseg.nn.patches`) whatever the number of DataLoader workers, the model starts from
``torch.manual_seed(seed)``, the learning rate is a pure function of the step (or of the used
fraction of the time budget), and a checkpoint holds the optimizer and torch RNG states: on
CPU in fp32, ``N`` steps in one go and ``k`` + resume + ``N - k`` give bitwise equal weights.

The package
-----------
:mod:`~volseg.stages.train.config` (the options, TOML, resume rules; coerced by
:mod:`~volseg.stages.train.coercion`), :mod:`~volseg.stages.train.data` (inputs and outputs, checked),
:mod:`~volseg.stages.train.losses`, :mod:`~volseg.stages.train.validation`,
:mod:`~volseg.stages.train.logs` and :mod:`~volseg.stages.train.loop` (the trainer and its loop); this
module runs them in order (:func:`train`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from volseg.core import preempt
from volseg.core.progress import Progress, Tracker
from volseg.nn.runtime import check_device
from volseg.stages.train.config import (
    DEFAULT_STEPS,
    FOREGROUND_KINDS,
    LOSSES,
    TrainConfig,
    load_config_file,
    output_paths,
    parse_duration,
    resolve_config,
    write_config_toml,
)
from volseg.stages.train.data import check_outputs, model_path
from volseg.stages.train.logs import JsonLog
from volseg.stages.train.loop import (
    LoopTotals,
    StepCallback,
    StopFlag,
    Trainer,
    TrainingInterrupted,
    run_loop,
)
from volseg.stages.train.losses import lr_factor
from volseg.stages.train.validation import validation_metrics
from volseg.storage.files import json_ready
from volseg.storage.paths import output_not_input

__all__ = [
    "DEFAULT_STEPS",
    "FOREGROUND_KINDS",
    "LOSSES",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "load_config_file",
    "lr_factor",
    "output_paths",
    "parse_duration",
    "resolve_config",
    "train",
    "validation_metrics",
]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    model
        The best model file (by validation V_rand; the final model without validation).
    last
        The last checkpoint (``--resume`` continues from it).
    log, curves, config_file
        The step / validation log, its figure and the resolved configuration (TOML).
    metrics
        Validation metrics of the best model (empty without validation).
    final_metrics
        Validation metrics at the last step.
    best_step
        The step of the best model (``None`` without validation).
    steps
        Steps done in all (resumed runs included).
    seconds
        Wall time of this call.
    steps_per_second
        Training steps per second of this call (validation excluded).
    data_wait_fraction
        Share of the training-loop time spent waiting for the next batch.
    config
        The resolved configuration.
    """

    model: Path
    last: Path
    log: Path
    curves: Path
    config_file: Path
    metrics: dict[str, float]
    final_metrics: dict[str, float]
    best_step: int | None
    steps: int
    seconds: float
    steps_per_second: float
    data_wait_fraction: float
    config: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (paths as text, the config as :meth:`TrainConfig.to_dict`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}
        return {**json_ready(out), "config": self.config.to_dict()}


def train(
    image: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    config: TrainConfig | None = None,
    *,
    progress: Progress | None = None,
    on_step: StepCallback | None = None,
    **overrides: object,
) -> TrainResult:
    """Train a U-Net (``volseg train``).

    Parameters
    ----------
    image, labels, output
        The image and label volumes ``(Z, Y, X)`` and the model file to write (``MODEL.pt``); each
        given here replaces the one in ``config``.
    config
        A :class:`TrainConfig`; keyword ``overrides`` replace its options: its field names, the
        U-Net's flat keys (``depth=3``), ``augment_prob``, and ``config_file`` for a TOML file.
    progress
        Receives the run's :class:`~volseg.core.progress.Update` values (task ``"train"``, counted in
        steps, with ``loss``, ``lr`` and ``steps/s``); ``None`` reports nothing. The CLI passes its bar.
    on_step
        Called as ``on_step(step, loss)`` after every step (tests, custom stopping).

    Returns
    -------
    TrainResult

    Raises
    ------
    VolsegError
        Bad input or options (one line; the CLI exits 2).
    TrainingInterrupted
        Ctrl-C (SIGINT): the last checkpoint was saved first; ``resume=True`` continues.

    Examples
    --------
    >>> volseg.train("image.zarr", "labels.zarr", "model.pt",
    ...              foreground=(0,), val_slices="25:30", time_limit="20m")  # doctest: +SKIP
    """
    if isinstance(progress, bool):  # volseg 0.1's switch for a bar that stages no longer draw
        progress = None
    config_file = overrides.pop("config_file", None)
    given = {"image": image, "labels": labels, "output": output}
    overrides.update({k: os.fspath(v) for k, v in given.items() if v is not None})
    config = resolve_config(config, config_file, **overrides)
    paths = _check_outputs(config, config_file)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # The run seeds torch's global RNG (model init, dropout); the caller gets its own state back.
    with torch.random.fork_rng(devices=devices):
        trainer = Trainer(config, paths)
        start = time.perf_counter()
        totals = _run(trainer, progress, on_step)
    return _result(trainer, totals, time.perf_counter() - start)


def _check_outputs(config: TrainConfig, config_file: object) -> dict[str, Path]:
    """Everything about the outputs that can be refused before the inputs are read."""
    check_device(config.device)  # before any output exists
    if config.output:
        output_not_input(
            {f"-o ({p.name})": p for p in output_paths(model_path(config.output)).values()},
            {"input IMAGE": config.image, "input LABELS": config.labels, "--config file": config_file},
        )
    return check_outputs(config)


def _run(trainer: Trainer, progress: Progress | None, on_step: StepCallback | None) -> LoopTotals:
    """Set up the outputs, train, and save what the end of the run (or Ctrl-C) leaves."""
    config, paths = trainer.config, trainer.paths
    if not config.resume:
        for stale in (paths["model"], paths["last"], paths["curves"]):
            stale.unlink(missing_ok=True)
    write_config_toml(config, paths["config"])
    log = JsonLog(paths["log"], trainer.step if config.resume else None)
    flag = StopFlag()
    try:
        with flag.installed():
            if not config.resume:  # a checkpoint exists from the first moment on
                trainer.save(paths["last"], {"step": 0}, trainer.training_state())
            with Tracker(progress, "train", config.total_steps, "steps") as tracker:
                totals = run_loop(trainer, log, flag, tracker, on_step)
            if flag.set:
                trainer.save(paths["last"], {"step": trainer.step}, trainer.training_state())
                if flag.preempted:  # a batch system's notice: exit 75, the same command with --resume goes on
                    raise preempt.Preempted(
                        f"{paths['last']}: stopped by {preempt.stop_signal()} at step {trainer.step}, exact "
                        f"checkpoint saved; continue with: {_resume_command(config)}"
                    )
                raise TrainingInterrupted(trainer.step, paths["last"], _resume_command(config))
            if trainer.validator is None or not paths["model"].exists():
                trainer.save(paths["model"], {"step": trainer.step}, None)
    finally:
        log.close()
    return totals


def _resume_command(config: TrainConfig) -> str:
    return f"volseg train {config.image} {config.labels} -o {config.output} --resume"


def _result(trainer: Trainer, totals: LoopTotals, seconds: float) -> TrainResult:
    best = trainer.best or {}
    paths = trainer.paths
    return TrainResult(
        model=paths["model"],
        last=paths["last"],
        log=paths["log"],
        curves=paths["curves"],
        config_file=paths["config"],
        metrics=dict(best.get("metrics", {})),
        final_metrics=trainer.final_metrics,
        best_step=best.get("step"),
        steps=trainer.step,
        seconds=seconds,
        steps_per_second=totals.steps_per_second,
        data_wait_fraction=totals.wait_fraction,
        config=trainer.config,
    )
