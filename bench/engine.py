"""The one training loop every variant runs in.

The engine owns what is not a GAN: device, seeds, data, mixed precision, the loss history,
sample grids, checkpoints and resuming. A variant only supplies ``train_step``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench import checkpoint
from bench.data import BatchSampler
from bench.config import TrainConfig
from bench.errors import ConfigError, Interrupted, TrainingDiverged
from bench.locations import TRAIN_RUNS
from bench.memory import check_fits, training_need
from bench.observer import Finding, Observer, RunStart
from bench.processes import Stopped
from bench.plan import RunPlan
from bench.registry import Variant, get_variant
from bench.run_folder import RunFolder
from bench.classifier import available_extractors
from bench.scoring import shared_scorer

CHECKPOINT = checkpoint.FILENAME
GRID_SIZE = 64
RUN_IDENTITY = ("variant", "dataset", "batch_size", "seed", "hparams", "real_samples")
"""What a resumed run must share with the saved one (real_samples: its scores' real images); steps, device and
intervals may change."""


@dataclass
class TrainResult:
    variant: Variant
    history: pd.DataFrame
    """One row per generator step: 'step' and every value train_step returned."""
    scores: pd.DataFrame
    """One row per evaluation: 'step' and every metric (fid_domain, kid_domain, ...)."""
    images_per_second: float
    """Real images through D per wall-clock second of this call's loop: start-up excluded,
    periodic evaluations, sample grids and checkpoints included."""
    out: Path | None
    findings: list[Finding] = field(default_factory=list)
    """What the run's observers found (its health checks), in the order first seen."""


class ScoringStopped(Exception):
    """Raised by the signal handler into a scoring pass, which then records nothing."""


def default_out(variant: str) -> Path:
    """Where `bench train` writes a run when not told: results/train/VARIANT-TIMESTAMP."""
    return TRAIN_RUNS / f"{variant}-{time.strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """Runs one variant for ``config.steps`` generator updates, optionally writing to ``out``. ``config``
    is resolved into its :class:`~bench.plan.RunPlan` here, unless it is one already.

    Example::

        result = Trainer(TrainConfig("dcgan", steps=200), out=None).run()
        result.history[["loss_d", "loss_g"]].tail()
    """

    def __init__(self, config: TrainConfig | RunPlan, out: Path | str | None = None, *, resume: bool = False,
                 progress: bool = True, observers: Sequence[Observer] = ()):
        plan = config if isinstance(config, RunPlan) else RunPlan.resolve(config)
        config, self.data, self.device, self.amp_dtype = plan.config, plan.data, plan.device, plan.amp_dtype
        self.config = config
        self.precision = plan.precision
        """What the run trains in (recorded with every run)."""
        self.out = Path(out) if out is not None else None
        self.progress = progress
        variant_cls = get_variant(config.variant)
        shape = "x".join(map(str, self.data.image_shape))
        check_fits(training_need(variant_cls, config.hparams, self.data.image_shape, self.data.num_classes,
                                 config.batch_size, value_bytes=4 if self.amp_dtype is None else 2,
                                 data_bytes=self.data.images.numel() if self.device.type == "cuda" else 0),
                   self.device, f"training {config.variant} on {shape} images in batches of {config.batch_size}")
        torch.manual_seed(config.seed)
        # channels-last suits the convolution kernels of both oneDNN (CPU) and cuDNN (tensor cores).
        self.variant = variant_cls(self.data.image_shape, self.data.num_classes, **config.hparams).to(
            self.device, memory_format=torch.channels_last)
        self.batches = BatchSampler(self.data, self.device, config.seed)
        self.batches.check(config.batch_size * self.variant.real_batches_per_step)  # before any folder is made
        self.fixed_latent = self.variant.latent(GRID_SIZE, torch.Generator().manual_seed(config.seed))
        self.fixed_labels = torch.arange(GRID_SIZE, device=self.device) % self.data.num_classes
        self.step = 0
        self.rows: list[dict[str, float]] = []
        self._pending: list[torch.Tensor] = []  # per-step losses still on the device
        self._names: list[str] = []
        self.evaluations: list[dict[str, float]] = []
        self._signal: int | None = None  # SIGINT or SIGTERM received during run()
        self._scoring = False  # whether a signal now interrupts a scoring pass (see _checkpoint_on_signals)
        self._saved_at = time.perf_counter()
        self._findings: list[Finding] = []
        # The config's own observers (the doctor), the caller's (tracking, pruning), and the run folder last.
        self.observers = [*plan.observers(), *observers]
        self.folder = RunFolder(self.out) if self.out is not None else None
        if self.folder is not None:
            saved = self.folder.prepare(resume)
            if saved is not None:
                self._load(saved)
            self.folder.open(dataclasses.asdict(config), self.findings())
            self.observers.append(self.folder)
        start = RunStart(self.variant, self.device, self.precision, self._report)
        for observer in self.observers:
            observer.on_start(start)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training's precision: bfloat16 autocast, or nothing (float32)."""
        # bfloat16 keeps float32's exponent range, so no GradScaler is needed; that matters here
        # because variants step several optimisers and differentiate through gradients (WGAN-GP).
        # The region spans a whole train_step, optimiser steps and weight clips included, and
        # autocast's cache would keep each weight's bfloat16 copy until the region exits: every
        # forward after D's update would see D as it was before it. Without the cache each
        # forward casts the weights as they are now, at no measurable cost (docs: Performance).
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def run(self, until: int | None = None) -> TrainResult:
        """Trains up to generator step ``until`` (default: ``config.steps``); a later call goes on
        from there, which is how benchmarks time the same trainer repeatedly."""
        config, variant = self.config, self.variant
        until = config.steps if until is None else until
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        batch = config.batch_size * variant.real_batches_per_step
        start_step, started = self.step, time.perf_counter()
        self._bar = tqdm(total=until, initial=self.step, disable=not self.progress, desc=variant.name,
                         unit="step", dynamic_ncols=True)
        self._saved_at = time.perf_counter()
        variant.train()
        with self._checkpoint_on_signals():
            self._loop(until, batch)
        self._flush()
        self._bar.close()
        elapsed = time.perf_counter() - started
        images = (self.step - start_step) * batch
        return TrainResult(variant, self.history(), pd.DataFrame(self.evaluations),
                           images / elapsed if elapsed > 0 else math.nan, self.out, self.findings())

    def _loop(self, until: int, batch: int) -> None:
        config, variant = self.config, self.variant
        if self.step and self._evaluation_due(until) and all(row["step"] != self.step for row in self.evaluations):
            self._end_step(until)  # a signal stopped the saved run while it scored this step
        while self.step < until:
            real, labels = self.batches.next(batch)
            for observer in self.observers:
                observer.before_step(self.step + 1, real)
            with self.autocast():
                losses = variant.train_step(real, labels)
            variant.average_generator(self.step + 1)
            if not self._names:  # this trainer's first step: what the contract says train_step returns
                variant.check_losses(losses)
            self._names = list(losses)
            self._pending.append(torch.stack([value.detach().float() for value in losses.values()]))
            self.step += 1
            for observer in self.observers:
                observer.after_step(self.step)
            if self.step % config.log_every == 0:
                self._flush()
            self._end_step(until)

    def _evaluation_due(self, until: int) -> bool:
        config = self.config
        return bool(config.eval_every and (self.step % config.eval_every == 0 or self.step == until) or
                    config.final_samples and self.step == config.steps)

    def _end_step(self, until: int) -> None:
        """The scoring, sample grid and checkpoint due at this step; then stops if a signal came."""
        config = self.config
        if self._evaluation_due(until):
            self.score_now()
        if self.folder is not None and (config.sample_every and self.step % config.sample_every == 0 or
                                        self.step == until):
            self.save_grid()
        if self.folder is not None and (config.checkpoint_every and self.step % config.checkpoint_every == 0 or
                                        self.step == until or self._signal is not None or
                                        time.perf_counter() - self._saved_at >= config.checkpoint_seconds):
            self.save()  # once, even when a signal and a periodic checkpoint fall on the same step
        if self._signal is not None:
            self._bar.close()
            raise Interrupted(self._signal, f"at step {self.step}; checkpoint written to {self.folder.checkpoint}")

    @contextlib.contextmanager
    def _checkpoint_on_signals(self):
        """With an output folder, SIGINT and SIGTERM end the run after the current step, with a
        checkpoint at that step, and cut short a scoring in progress (with Inception on a CPU it
        can take minutes; the resumed run scores that step first). A second signal stops at once,
        without a checkpoint. Python only lets the main thread install handlers: elsewhere the
        signals keep their usual effect."""
        if self.folder is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop_after_this_step(signum: int, frame) -> None:
            if self._signal is not None:  # a second signal: stop now, named as itself
                raise Stopped(signum)
            self._signal = signum
            if self._scoring:
                raise ScoringStopped

        previous = {signum: signal.signal(signum, stop_after_this_step) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def findings(self) -> list[Finding]:
        """What the observers reported, the first finding of each check, in the order seen."""
        return list(self._findings)

    def _report(self, finding: Finding) -> None:
        """Where observers report findings (RunStart.report): a check already reported is not repeated."""
        if any(seen.check == finding.check for seen in self._findings):
            return
        self._findings.append(finding)
        tqdm.write(f"{finding.check}, step {finding.step}: {finding.message}")
        for observer in self.observers:
            observer.on_finding(finding)

    def score_now(self) -> dict[str, float] | None:
        """Scores the generator now (fixed sampling seed, so the training RNG is untouched); at the
        last step of a run with ``final_samples``, on that many samples with every extractor.
        None when a signal cut the scoring short."""
        self._flush()  # a loss gone NaN since the last read stops the run here, not inside FID's sqrtm
        config = self.config
        final = config.final_samples and self.step == config.steps
        scores = {"step": self.step}
        try:
            self._scoring = True
            for extractor in available_extractors(config.dataset) if final else (config.features,):
                scorer = shared_scorer(config.dataset, extractor, self.device, config.data_root, config.real_samples)
                samples = config.final_samples if final else config.eval_samples
                scores |= scorer.score(self.variant, samples, seed=config.seed)
                if self.variant.averaging:  # what the average adds: the raw G on the same noise
                    raw = scorer.score(self.variant, samples, seed=config.seed, raw=True)
                    scores |= {f"{key}_raw": value for key, value in raw.items()}
        except ScoringStopped:
            return None
        finally:
            self._scoring = False
        self.evaluations.append(scores)
        for observer in self.observers:
            observer.on_scores(scores)
        return scores

    def _flush(self) -> None:
        """Reads the pending losses in one transfer and stops on the first non-finite one."""
        if not self._pending:
            return
        values = torch.stack(self._pending).cpu()
        first_step = self.step - len(self._pending) + 1
        if not torch.isfinite(values).all():
            row, column = (~torch.isfinite(values)).nonzero()[0].tolist()
            raise TrainingDiverged(f"{self._names[column]} became {values[row, column].item()} at step "
                                   f"{first_step + row}; lower the learning rate or check the data range")
        rows = [{"step": first_step + i, **dict(zip(self._names, row))} for i, row in enumerate(values.tolist())]
        self.rows += rows
        self._pending = []
        for observer in self.observers:
            observer.on_losses(rows)
        self._bar.update(len(values))
        self._bar.set_postfix({name: f"{value:.3g}" for name, value in self.rows[-1].items() if name != "step"})

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    @torch.no_grad()
    def save_grid(self) -> Path:
        """Saves G's images for the fixed noise (and labels) as an 8x8 PNG grid."""
        with self.variant.evaluating(), self.autocast():
            images = self.variant.generate(self.fixed_latent, self.fixed_labels)
        path = self.folder.write_grid(images, self.step)
        for observer in self.observers:
            observer.on_grid(path, self.step)
        return path

    def save(self) -> None:
        """Writes a checkpoint that resumes the run exactly (weights, optimisers, every RNG, the
        findings and each named observer's state), and the loss and score tables beside it."""
        self._flush()
        self.folder.write_checkpoint(checkpoint.State(
            config=dataclasses.asdict(self.config),
            step=self.step,
            image_shape=list(self.variant.image_shape),
            num_classes=self.variant.num_classes,
            variant=self.variant.state_dict(),
            optimizers={key: opt.state_dict() for key, opt in self.variant.optimizers().items()},
            sampler=self.batches.state_dict(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            rows=self.rows,
            evaluations=self.evaluations,
            findings=[finding.as_dict() for finding in self._findings],
            observers={observer.name: observer.state_dict() for observer in self.observers if observer.name},
        ))
        self._saved_at = time.perf_counter()

    def _load(self, path: Path) -> None:
        """Resumes from ``path``, written on this device or another: the state is read on the CPU
        (RNG states must stay CPU tensors) and load_state_dict moves weights and moments here."""
        state = checkpoint.load(path)
        with checkpoint.damaged(path):
            saved = TrainConfig.from_saved(state["config"])  # a field an older checkpoint lacks: its default
        changed = [key for key in RUN_IDENTITY if getattr(saved, key) != getattr(self.config, key)]
        saved_data = {"image_shape": tuple(state["image_shape"]), "num_classes": state["num_classes"]}
        changed += [key for key, value in saved_data.items() if value != getattr(self.variant, key)]
        if changed:
            raise ConfigError(f"cannot resume {path}: {', '.join(changed)} differ from the saved run; "
                              "resume with the same settings, or use another --out for a new run")
        with checkpoint.damaged(path):
            self.variant.load_state_dict(state["variant"])
            for key, optimizer in self.variant.optimizers().items():
                optimizer.load_state_dict(state["optimizers"][key])
            self.batches.load_state_dict(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self._findings = [Finding(**row) for row in state["findings"]]
            for observer in self.observers:  # one the saved run did not have starts afresh
                if observer.name in state["observers"]:
                    observer.load_state_dict(state["observers"][observer.name])
        self.step = state["step"]
        self.rows = state["rows"]
        self.evaluations = state["evaluations"]


def train(config: TrainConfig | RunPlan, out: Path | str | None = None, *, resume: bool = False,
          progress: bool = True, observers: Sequence[Observer] = ()) -> TrainResult:
    """Trains ``config.variant`` and returns the trained variant, its loss history and its
    throughput. With ``out``, writes sample grids, ``losses.csv``, ``config.json`` and a
    checkpoint there; ``resume=True`` continues the run saved in ``out``."""
    return Trainer(config, out, resume=resume, progress=progress, observers=observers).run()
