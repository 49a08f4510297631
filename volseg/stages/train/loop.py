"""The training run: the Trainer (model, optimizer, data, checkpoints) and the loop that drives it.

:func:`run_loop` trains from the trainer's step to the end of the run (steps or time budget), logs every
step, reports it to the progress protocol (:class:`volseg.core.progress.Tracker`: the step, with the
loss, the learning rate and steps/s as info), and validates and checkpoints every ``val_every`` steps.
Ctrl-C sets a :class:`StopFlag`: the loop stops at the end of the step and the caller saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from volseg.core import preempt
from volseg.core.progress import Tracker
from volseg.core.resources import available_cores
from volseg.errors import ModelError, OptionError, OutputError, VolsegWarning
from volseg.nn.modelfile import read_model_file, save_model
from volseg.nn.patches import BatchIndices, IntensityStats, PatchConfig, PatchDataset
from volseg.nn.runtime import autocast_context, resolve_device, resolve_precision
from volseg.nn.unet import UNet
from volseg.stages.train.config import TrainConfig
from volseg.stages.train.data import prepare_data
from volseg.stages.train.logs import JsonLog, draw_curves
from volseg.stages.train.losses import loss_function, lr_factor, masked_loss
from volseg.stages.train.validation import Validator
from volseg.storage.conventions import Convention
from volseg.storage.provenance import provenance

__all__ = ["LoopTotals", "StepCallback", "StopFlag", "Trainer", "TrainingInterrupted", "run_loop"]

#: Called as ``on_step(step, loss)`` after every step.
StepCallback = Callable[[int, float], None]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the last checkpoint was saved at ``step``; ``--resume`` continues from it."""

    def __init__(self, step: int, checkpoint: Path, command: str) -> None:
        self.step, self.checkpoint, self.command = step, checkpoint, command
        super().__init__(f"interrupted at step {step}; saved {checkpoint}; continue with: {command}")


class StopFlag:
    """Stop at the end of the step: SIGINT (Ctrl-C; a second one interrupts at once), or SIGTERM / SIGUSR1 /
    SIGUSR2, a batch system's notice before it kills the job (:mod:`volseg.core.preempt`)."""

    def __init__(self) -> None:
        self.interrupted = False

    @property
    def set(self) -> bool:
        return self.interrupted or preempt.requested()

    @property
    def preempted(self) -> bool:
        """The stop came from a batch system's signal (exit :data:`volseg.core.preempt.PREEMPTED_EXIT`)."""
        return preempt.requested() and not self.interrupted

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True

        signal.signal(signal.SIGINT, handler)
        try:
            with preempt.stop_on_signals():
                yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _worker_init(worker_id: int) -> None:
    # One thread per worker: the workers share the cores with the training threads. Ctrl-C is
    # the main process's business: it stops at the end of a step and then shuts the workers down.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def auto_workers(workers: int, device: torch.device) -> int:
    """DataLoader processes for ``--workers`` (``-1`` chooses); over 4 per core are capped, with a warning."""
    cores = available_cores()
    if workers > 4 * cores:  # each worker holds a copy of the process (~0.4 GB): more costs memory
        warnings.warn(
            f"--workers {workers} is more than 4 per core; using {4 * cores}", VolsegWarning, stacklevel=2
        )
        return 4 * cores
    if workers >= 0:
        return workers
    if device.type == "cpu":
        # benchmarks/train.py, 2 cores: in-process loading waits ~4 % of the step, one or two
        # workers < 1 % at the same steps/s; two workers feed far more patches than a CPU trains on
        return max(0, min(2, cores - 1))
    return max(1, min(8, cores - 1))


def saved_stats(state: dict[str, Any], path: Path) -> IntensityStats:
    """The intensities a checkpoint was trained with; a damaged record is one ModelError line."""
    try:
        stats = IntensityStats(**state["extra"]["intensity"])
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in dataclasses.astuple(stats)):
            raise ValueError("not finite numbers")
        return stats
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{path}: the checkpoint's intensity record is damaged ({type(exc).__name__}: {exc}); "
            "start a new run with --overwrite"
        ) from None


# ============================================================================= trainer
class Trainer:
    """One training run: model, optimizer, data, validation, checkpoints, log."""

    def __init__(self, config: TrainConfig, paths: dict[str, Path]) -> None:
        self.config, self.paths = config, paths
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(self.device, config.precision)
        state = read_model_file(paths["last"]) if config.resume else None
        self.data = prepare_data(config, saved_stats(state, paths["last"]) if state else None)
        torch.manual_seed(config.seed)
        self.model = UNet(config.model).to(self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        self.ema = Averaged(self.model, config.ema) if config.ema > 0 else None
        self.loss = masked_loss(config.loss) if config.target == "affinities" else loss_function(config.loss)
        self.step, self.elapsed = 0, 0.0
        self.best: dict[str, Any] | None = None
        self.final_metrics: dict[str, float] = {}
        if state:
            self._restore(state)
        self.validator = (
            Validator(self.data, config, self.device, self.precision) if self.data.val_sections else None
        )

    # ------------------------------------------------------------ state
    def training_state(self) -> dict[str, Any]:
        """What ``--resume`` needs besides the weights: step, clock, best score, optimizer and RNG states."""
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            # with --ema the file's weights are the average: the trained ones go here, to go on from
            "trained_weights": (
                {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if self.ema else None
            ),
        }

    def _restore(self, data: dict[str, Any]) -> None:
        try:
            self._load_state(data)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            first = str(exc).splitlines()[0][:120] if str(exc) else ""
            raise ModelError(
                f"{self.paths['last']}: the checkpoint's training state is damaged ({type(exc).__name__}: "
                f"{first}); start a new run with --overwrite"
            ) from None

    def _load_state(self, data: dict[str, Any]) -> None:
        state = data["training_state"]
        if self.ema is not None:  # the file's weights are the average; the trained ones are kept beside
            self.ema.model.load_state_dict(data["state_dict"])
            self.model.load_state_dict(state["trained_weights"])
        else:
            self.model.load_state_dict(data["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.elapsed, self.best = int(state["step"]), float(state["elapsed"]), state.get("best")

    def save(self, path: Path, metrics: dict[str, Any], training_state: dict[str, Any] | None) -> None:
        """Write the model (a checkpoint with ``training_state``) atomically; a failure keeps the old file."""
        try:
            self._save(path, metrics, training_state)
        except OSError as exc:
            raise OutputError(
                f"{path}: cannot write it ({exc.strerror or exc}); the previous file, if any, is intact"
            ) from exc

    def _save(self, path: Path, metrics: dict[str, Any], training_state: dict[str, Any] | None) -> None:
        c = self.config
        save_model(
            path,
            self.model_out,
            normalization=self.data.stats.normalization,
            convention=Convention(foreground=tuple(c.foreground), foreground_kind=c.foreground_kind),
            provenance=provenance([c.image, c.labels], config=c.to_dict()),
            metrics=metrics,
            train_config=c.to_dict(),
            extra={
                "intensity": dataclasses.asdict(self.data.stats),
                "image_dtype": str(np.dtype(self.data.image.dtype)),
                "train_sections": list(self.data.train_sections),
                "val_sections": list(self.data.val_sections),
                "steps": self.step,
                "seconds": round(self.elapsed, 3),
                "precision": self.precision,
                "device": str(self.device),
                "target": c.target,
                **({"offsets": [list(o) for o in self.offsets]} if self.offsets else {}),
            },
            training_state=training_state,
        )

    # ------------------------------------------------------------ schedule
    def fraction_done(self) -> float:
        """Fraction of the run done: by steps, by the time budget, or the larger of the two."""
        c = self.config
        parts = []
        if c.total_steps is not None:
            parts.append(self.step / c.total_steps)
        if c.time_limit_seconds is not None:
            parts.append(self.elapsed / c.time_limit_seconds)
        return max(parts)

    # ------------------------------------------------------------ data
    def patch_config(self) -> PatchConfig:
        """How the training patches are drawn (sections, size, augmentation, sampler, weights, cache)."""
        c, d = self.config, self.data
        return PatchConfig(
            sections=d.train_sections,
            patch_size=c.patch_size,
            foreground=c.foreground,
            stats=d.stats,
            seed=c.seed,
            context=c.model.context,
            augment=c.augment,
            min_foreground=c.min_foreground,
            max_attempts=c.max_attempts,
            border_weights=c.loss == "weighted_bce",
            w0=c.w0,
            sigma=c.sigma,
            foreground_is_boundary=c.foreground_kind == "boundary",
            cache_bytes=int(c.cache_gb * 2**30),
            offsets=self.offsets,
            instance_ids=self.data.instance_ids,
        )

    @property
    def offsets(self) -> tuple[tuple[int, int, int], ...] | None:
        """The affinity offsets of an affinity model, else None."""
        if self.config.target != "affinities":
            return None
        from volseg.core.affinities import parse_offsets

        return tuple(tuple(o) for o in parse_offsets(self.config.offsets))  # type: ignore[misc]

    def loader(self) -> torch.utils.data.DataLoader:
        """Batches from the trainer's step to the end of the step budget (endless with a time limit only)."""
        c = self.config
        workers = auto_workers(c.workers, self.device)
        return torch.utils.data.DataLoader(
            PatchDataset(self.data.image, self.data.labels, self.patch_config()),
            batch_sampler=BatchIndices(c.batch_size, self.step, c.total_steps),
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
            prefetch_factor=4 if workers > 0 else None,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating the iterator draws a base seed, which must not advance the
            # global RNG that dropout uses (a resumed run creates its loader at a later step)
            generator=torch.Generator().manual_seed(c.seed),
        )

    # ------------------------------------------------------------ one step
    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimizer step on ``batch``; returns the loss."""
        self.model.train()
        x = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = batch["target"].to(self.device, non_blocking=True)
        extra = "mask" if "mask" in batch else "weight"  # affinities: the known pairs; weighted BCE: the map
        w = batch[extra].to(self.device, non_blocking=True) if extra in batch else None
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(
                self.step, self.fraction_done(), self.config.warmup_steps
            )
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.precision):
            logits = self.model(x)
        loss = self.loss(logits, y, w)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return float(loss.detach())

    @property
    def model_out(self) -> UNet:
        """The model validated and saved: the averaged weights with ``--ema``, else the trained ones."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        """The learning rate of the last step."""
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------ validation + checkpoint
    def checkpoint(self, log: JsonLog) -> dict[str, float]:
        """Validate (when sections are held out), keep the best model, save the last checkpoint, redraw."""
        metrics: dict[str, float] = {}
        if self.validator is not None:
            start = time.perf_counter()
            metrics = self.validator(self.model_out)
            seconds = round(time.perf_counter() - start, 3)
            log.write(
                {
                    "kind": "val",
                    "step": self.step,
                    "time": round(self.elapsed, 3),
                    "seconds": seconds,
                    **metrics,
                }
            )
            if self.best is None or metrics["v_rand"] > self.best["metrics"]["v_rand"]:
                self.best = {"step": self.step, "metrics": metrics}
                self.save(self.paths["model"], {**metrics, "step": self.step}, None)
        self.final_metrics = metrics
        self.save(self.paths["last"], {**metrics, "step": self.step}, self.training_state())
        draw_curves(self.paths["log"], self.paths["curves"])
        return metrics


class Averaged:
    """An exponential moving average of a model's weights and buffers (batch-norm statistics).

    ``update(model, step)`` after each optimizer step: ``avg = d * avg + (1 - d) * weight`` with
    ``d = min(decay, (1 + step) / (10 + step))``; integer buffers (batch counts) are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        mine = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                mine[name].mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                mine[name].copy_(value)


# ================================================================================ loop
@dataclass
class LoopTotals:
    """What one call of :func:`run_loop` did: steps, seconds in training steps (waiting included), waiting."""

    steps: int = 0
    train: float = 0.0
    wait: float = 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.train if self.train else 0.0

    @property
    def wait_fraction(self) -> float:
        return self.wait / self.train if self.train else 0.0


def run_loop(
    trainer: Trainer, log: JsonLog, flag: StopFlag, tracker: Tracker, on_step: StepCallback | None = None
) -> LoopTotals:
    """Train from the trainer's step to the end of the run, or until ``flag`` is set (Ctrl-C)."""
    totals = LoopTotals()
    if trainer.fraction_done() >= 1.0:
        return totals
    start_elapsed, t0 = trainer.elapsed, time.perf_counter()
    since_val = 0
    batches = iter(trainer.loader())
    while not flag.set:
        t_wait = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        t_step = time.perf_counter()
        loss = trainer.train_step(batch)
        t_end = time.perf_counter()
        trainer.elapsed = start_elapsed + (t_end - t0)
        totals.steps += 1
        totals.train += t_end - t_wait
        totals.wait += t_step - t_wait
        _record_step(trainer, log, tracker, totals, loss, wait=t_step - t_wait, took=t_end - t_wait)
        if on_step is not None:
            on_step(trainer.step, loss)
        if not math.isfinite(loss):
            raise OptionError(
                f"training diverged at step {trainer.step} (loss {loss}); lower --lr or use --precision fp32"
            )
        since_val += 1
        done = trainer.fraction_done() >= 1.0
        if flag.set:
            break
        if since_val >= trainer.config.val_every or done:
            trainer.checkpoint(log)
            trainer.elapsed = start_elapsed + (time.perf_counter() - t0)
            since_val = 0
        if done:
            break
    return totals


def _record_step(
    trainer: Trainer,
    log: JsonLog,
    tracker: Tracker,
    totals: LoopTotals,
    loss: float,
    wait: float,
    took: float,
) -> None:
    """One step into the log and to the progress protocol."""
    log.write(
        {
            "kind": "step",
            "step": trainer.step,
            "loss": round(loss, 6),
            "lr": trainer.lr,
            "time": round(trainer.elapsed, 3),
            "step_seconds": round(took, 5),
            "data_wait": round(wait, 5),
        }
    )
    info: dict[str, float | str] = {"loss": loss, "lr": trainer.lr, "steps/s": totals.steps_per_second}
    limit = trainer.config.time_limit_seconds
    if limit is not None:
        info["left"] = _clock(max(0.0, limit - trainer.elapsed))
    tracker.update(trainer.step, **info)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"
