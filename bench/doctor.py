"""The training doctor: the classic silent GAN failures, caught while the run is going.

Every check works from outside the variant (its G and D, the real batches, the losses it
returns), so a third-party variant gets them all without doing anything. The checks read the
device rarely: once at the start, then one small read every ``every`` steps; the loss-based
ones use the rows the engine already brought to the host.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import statistics
from collections import deque
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.data import ImageDataset, to_unit_range
from bench.observer import Finding, Observer, RunStart
from bench.errors import ConfigError, UnhealthyRun
from bench.readers import read_bytes
from bench.registry import Variant

SAMPLES = 64
HEALTH = "health.json"
"""The doctor's findings in a run folder (and an MLflow run's artifacts), read by `bench doctor`."""


MAX_HEALTH_BYTES = 1 << 20
FINDING_FIELDS = {"check": str, "step": int, "message": str, "fatal": bool}
"""A health.json entry's fields and their JSON types (observer.Finding)."""


def write_health(path: Path, findings: list[Finding]) -> None:
    """health.json: the findings so far; an empty list is the doctor's all-clear."""
    path.write_text(json.dumps([finding.as_dict() for finding in findings], indent=2) + "\n")


def read_health(path: Path) -> list[Finding]:
    """The findings in a health.json, which may come from elsewhere: checked field by field, read
    only when it is a regular file of a sane size; anything else is one line naming the fault."""

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{path} is not a list of the doctor's findings ({problem}); pass a folder written by "
                           "`bench train` or a study trial")

    data = read_bytes(path, "the health file", "pass a folder written by `bench train` or a study trial (the doctor "
                      "writes a few kB)", limit=MAX_HEALTH_BYTES)
    try:
        rows = json.loads(data)
    except (ValueError, RecursionError) as exc:  # not JSON (or not UTF-8), or nested past the parser's depth
        raise refuse(f"not JSON: {str(exc)[:80] or type(exc).__name__}") from None
    if not isinstance(rows, list):
        raise refuse(f"a JSON {type(rows).__name__}, not a list")
    findings = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or row.keys() != FINDING_FIELDS.keys():
            raise refuse(f"entry {index} is not an object with the keys {', '.join(FINDING_FIELDS)}")
        for key, kind in FINDING_FIELDS.items():
            # bool is an int in Python: a step of true is refused, a fatal of 1 too
            if not isinstance(row[key], kind) or (kind is int and isinstance(row[key], bool)):
                raise refuse(f"entry {index}: '{key}' must be {kind.__name__}, got {type(row[key]).__name__}")
        findings.append(Finding(**row))
    return findings


class Doctor(Observer):
    """Watches one training run through the observer hooks. It reports a problem each time it sees
    it; the engine keeps the first report of each check, so the step recorded is the first seen."""

    name = "doctor"
    every = 50
    """Steps between the weight checks (the first generator step is always checked)."""
    window = 100
    """Steps of losses that the loss-based checks compare."""
    warmup = 200
    """Steps before the sample checks: an untrained generator's samples all look alike."""
    collapse_every = 200
    memorising_images = 256
    """Training images, and as many held-out ones, that the memorisation check shows D."""
    memorising_share = 0.8
    """The share of (training, held-out) pairs in which D scores the training image higher, beyond
    which D is memorising (0.5: it treats both alike); calibrated in docs/results/memorisation.csv."""

    variant: Variant  # the run's, and where its findings go: from on_start
    report: Callable[[Finding], None]

    def __init__(self, dataset: str, train: ImageDataset | None = None,
                 held_out: Callable[[], ImageDataset | None] | None = None):
        """``train``, ``held_out``: the run's training split and where to read images it never trains on
        (its test split; read at the first memorisation check), for that check, skipped without them."""
        self.dataset = dataset
        self.rows: deque[dict[str, float]] = deque(maxlen=2 * self.window)
        self.real_spread: float | None = None
        self._before: list[torch.Tensor] | None = None
        self._seen: dict[str, int] = {}  # sample checks in a row at which a problem was seen
        self.memorising: list[tuple[int, float]] = []
        """(step, share) at each memorisation check: how far D ranks training images above held-out ones."""
        self._train, self._held_out = train, held_out

    def on_start(self, run: RunStart) -> None:
        self.variant, self.report = run.variant, run.report
        self.device = run.device
        self.fixed_latent = run.variant.latent(SAMPLES, torch.Generator().manual_seed(0))
        self.fixed_labels = torch.arange(SAMPLES, device=run.device) % run.variant.num_classes
        try:
            from bench.scoring import load_domain_classifier

            self.classifier = load_domain_classifier(self.dataset, run.device)
        except ConfigError:  # no shipped classifier for this dataset: the class check is skipped
            self.classifier = None

    def state_dict(self) -> dict:
        """The rolling state a resumed run needs for its checks to carry on where they were."""
        return {"rows": list(self.rows), "real_spread": self.real_spread, "seen": dict(self._seen),
                "memorising": list(self.memorising)}

    def load_state_dict(self, state: dict) -> None:
        self.rows.clear()
        self.rows.extend(state["rows"])
        self.real_spread = state["real_spread"]
        self._seen = dict(state["seen"])
        self.memorising = [tuple(entry) for entry in state.get("memorising", [])]

    def found(self, check: str, step: int, message: str, *, fatal: bool = False) -> None:
        """Reports ``check`` (the engine keeps the first report of each) and stops the run for a fatal one."""
        self.report(Finding(check, step, message, fatal))
        if fatal:
            raise UnhealthyRun(f"stopped at step {step}: {message}")

    # -- around each step ---------------------------------------------------------------------------

    def before_step(self, step: int, real: torch.Tensor) -> None:
        if self.real_spread is None:
            self._check_data(step, real)
        if step == 1 or step % self.every == 0:
            self._before = [param.detach().clone() for param in self.variant.G.parameters()]

    def after_step(self, step: int) -> None:
        if self._before is not None:
            self._check_weights(step)
            self._before = None
        if step >= self.warmup and step % self.collapse_every == 0:
            self._check_samples(step)
            if self._pairs is not None:
                self._check_memorising(step)

    # -- the checks -----------------------------------------------------------------------------------

    def _check_data(self, step: int, real: torch.Tensor) -> None:
        low, high = real.float().aminmax()
        low, high = float(low), float(high)
        flat = real[:SAMPLES].float().flatten(1)
        self.real_spread = float(torch.pdist(flat).mean())
        if low >= -0.05 or high > 1.05 or low < -1.05:
            output = _last_layer(self.variant.G)
            scale = "x * 2 - 1 for [0, 1] data, x / 127.5 - 1 for [0, 255]" if high <= 255.5 else "rescale it"
            self.found("data_range", step, f"real images lie in [{low:.3g}, {high:.3g}] but the generator "
                       f"(ending in {output}) produces [-1, 1]: D can tell them apart by range alone; "
                       f"scale the data to [-1, 1] ({scale})", fatal=True)
        reach = output_range(self.variant.G)
        if reach is not None and (low < reach[0] - 0.05 or high > reach[1] + 0.05):
            self.found("output_range", step, f"the generator ends in {_last_layer(self.variant.G)}, whose outputs "
                       f"lie in [{reach[0]:g}, {reach[1]:g}], but the real images span [{low:.3g}, {high:.3g}]: G "
                       "can never draw the pixels outside its range, D tells real from fake by them alone, and "
                       "the symptoms would be 'D wins' and mode collapse; end G in Tanh for [-1, 1] data",
                       fatal=True)

    @torch.no_grad()
    def _check_weights(self, step: int) -> None:
        after = list(self.variant.G.parameters())
        changed = torch.stack([(old != new).any() for old, new in zip(self._before, after)]).any()
        finite = torch.stack([torch.isfinite(p).all() for p in self.variant.parameters()]).all()
        values = [changed, finite]
        bound = self.variant.weight_bound()
        if bound is not None:
            values.append(torch.stack([p.abs().max() for p in self.variant.D.parameters()]).max())
        values = torch.stack([value.float() for value in values]).tolist()  # the one device read
        if not values[1]:
            self.found("nonfinite_weights", step, "a weight of G or D became NaN or infinite (a non-finite "
                       "gradient); lower the learning rate, or check the loss for log(0) or division by zero",
                       fatal=True)
        if not values[0]:
            self.found("no_generator_gradient", step, "the generator receives no gradient: its weights did not "
                       "change in a generator step; is the fake batch detached in the generator step (or G's "
                       "optimiser built over the wrong parameters)?", fatal=True)
        if bound is not None and values[2] > bound * (1 + 1e-4):
            self.found("clipping", step, f"D's weights reach {values[2]:.3g}, beyond the bound {bound:g} that "
                       f"'{self.variant.name}' declares: clip every weight of D to [-{bound:g}, {bound:g}] after "
                       "each of its updates")

    @torch.no_grad()
    def _check_samples(self, step: int) -> None:
        with self.variant.evaluating(raw=True):  # the G that trains, not its average
            samples = self.variant.generate(self.fixed_latent, self.fixed_labels).float()
        spread = float(torch.pdist(samples.flatten(1)).mean())
        self._persisting("mode_collapse", step, spread < 0.05 * self.real_spread,
                         f"samples from {SAMPLES} different latent vectors are nearly identical (mean pairwise "
                         f"distance {spread:.3g}, real images {self.real_spread:.3g}): mode collapse; does G use "
                         "its latent input? Try a lower learning rate, or a loss less prone to collapse (a Wasserstein "
                         "critic with a gradient penalty)")
        if self.classifier is not None:
            predicted = self.classifier(samples.clamp(-1, 1)).argmax(1)
            classes = int((torch.bincount(predicted, minlength=self.variant.num_classes) >= 2).sum())
            self._persisting("few_classes", step, classes <= 1,
                             f"the classifier sees a single class among {SAMPLES} samples: mode collapse")

    @functools.cached_property
    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The memorisation check's images, in [-1, 1] on the run's device, and their labels (see
        :func:`memorisation_sets`): built at the first check, so that a shorter run reads no test split
        and hashes nothing. None where the check cannot run (no held-out images, or no D to score them)."""
        if self._train is None or self._held_out is None or not isinstance(getattr(self.variant, "D", None), nn.Module):
            return None
        held_out = self._held_out()
        pairs = memorisation_sets(self._train, held_out, self.memorising_images) if held_out is not None else None
        if pairs is None:
            return None
        images, labels = pairs
        return to_unit_range(images).to(self.device), labels.to(self.device)

    @torch.no_grad()
    def _check_memorising(self, step: int) -> None:
        """Does D score the images it trains on above real images it has never seen? (Karras et al.
        2020's ADA watches E[sign(D(x_real))], whose level depends on the loss; measured against held-out
        reals, the share is 0.5 for every loss, and an autoencoder D's, when nothing is memorised.)"""
        images, labels = self._pairs
        scores = self._scores(images, labels)
        if scores.numel() != len(images):  # not one score an image: nothing to rank
            return
        scores, half = scores.flatten(), len(images) // 2
        share = ranked_above(scores[:half], scores[half:])
        self.memorising.append((step, share))
        self._persisting("memorising", step, share > self.memorising_share,
                         f"D is memorising the {len(self._train):,} training images: it scores a training image above "
                         f"a held-out one in {share:.0%} of pairs (50% when it treats them alike); if FID against "
                         "held-out images turns upward, try fewer steps, more images or --set "
                         "diffaugment=color,translation,cutout",
                         times=2)

    def _scores(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """D's scores as in its updates (train mode, augmented; in float32), leaving no trace: D's buffers
        (batch-norm statistics, spectral norm's vectors) and the random streams are as they were."""
        D = self.variant.D
        saved = {name: buffer.clone() for name, buffer in D.named_buffers()}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            scores = self.variant.discriminate(images, labels).float()
        # Put back through load_state_dict, so that a layer that keeps a count beside its buffers (the
        # debiased batch norm of Lucic's D) reads it again; a buffer no state dict holds, by hand.
        for name in D.load_state_dict(saved, strict=False).unexpected_keys:
            D.get_buffer(name).copy_(saved[name])
        return scores

    def _persisting(self, check: str, step: int, seen: bool, message: str, times: int = 3) -> None:
        """Reports ``check`` once it is seen at ``times`` checks in a row: GANs often pass through a
        brief collapse early on (the MLP GAN does around steps 200-400) and recover by themselves."""
        self._seen[check] = self._seen.get(check, 0) + 1 if seen else 0
        if self._seen[check] >= times:
            self.found(check, step, message)

    def on_losses(self, rows: list[dict[str, float]]) -> None:
        self.rows.extend(rows)
        step = int(rows[-1]["step"])
        if len(self.rows) < self.rows.maxlen:
            return
        rows = list(self.rows)
        recent, earlier = rows[self.window:], rows[:self.window]
        if not self.variant.critic:
            d_key, g_key = self.variant.loss_keys
            loss_d = statistics.mean(row[d_key] for row in recent)
            rising = statistics.mean(row[g_key] for row in recent) > statistics.mean(row[g_key] for row in earlier)
            if loss_d < 0.05 and rising:
                self.found("discriminator_wins", step, f"D's loss averaged {loss_d:.3g} over the last "
                           f"{self.window} steps while G's loss rose: the discriminator wins outright and G "
                           "gets no useful gradient; lower D's learning rate, use the non-saturating G loss, "
                           "label smoothing or a smaller D")
        for key, expected in self.variant.expected.items():
            if key not in recent[0] or step < self.warmup:
                continue
            value = statistics.mean(row[key] for row in recent)
            if not expected.low <= value <= expected.high:
                self.found(expected.check, step, f"{expected.meaning} averaged {value:.3g} over the last "
                           f"{self.window} steps, outside [{expected.low:g}, {expected.high:g}]; {expected.fix}")


def memorisation_sets(train: ImageDataset, held_out: ImageDataset, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to ``n`` training images and as many held-out ones that are not among them (compared by
    content: an image folder without a test folder is its own test split), drawn once with seed 0,
    as one batch (images uint8, labels): the training half first. None when fewer than 64 are held out."""
    def digest(image: torch.Tensor) -> bytes:
        return hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest()

    seen = {digest(image) for image in train.images}
    unseen = torch.tensor([digest(image) not in seen for image in held_out.images], dtype=torch.bool)
    n = min(n, len(train), int(unseen.sum()))
    if n < 64:
        return None
    draw = torch.Generator().manual_seed(0)
    ours = torch.randperm(len(train), generator=draw)[:n]
    theirs = unseen.nonzero().flatten()[torch.randperm(int(unseen.sum()), generator=draw)[:n]]
    return (torch.cat([train.images[ours], held_out.images[theirs]]),
            torch.cat([train.labels[ours], held_out.labels[theirs]]))


def ranked_above(first: torch.Tensor, second: torch.Tensor) -> float:
    """The share of pairs (a from ``first``, b from ``second``) with a > b, ties counting half: the
    area under the ROC curve of telling them apart by score (Mann-Whitney), 0.5 for one distribution."""
    greater = (first[:, None] > second[None, :]).float().mean()
    ties = (first[:, None] == second[None, :]).float().mean()
    return float(greater + ties / 2)


PROBE = torch.cat([-torch.logspace(4, -4, 81), torch.zeros(1), torch.logspace(-4, 4, 81)])
"""Inputs from -1e4 to 1e4 through which a generator's last layer is probed for its output range."""


@torch.no_grad()
def output_range(generator: nn.Module) -> tuple[float, float] | None:
    """The interval the generator's last layer can output, found by probing it with inputs from
    -1e4 to 1e4 (a side still growing at the ends is unbounded), so that any elementwise
    module is known, a user's own as well as Tanh or Sigmoid. None when the last layer has
    weights (a convolution, not an activation) or does not act elementwise."""
    last = _last_module(generator)
    if any(True for _ in last.parameters()) or any(True for _ in last.buffers()):
        return None
    device = next(generator.parameters()).device
    probe = PROBE.to(device).view(-1, 1, 1, 1)
    try:
        output = last(probe.clone())  # a copy: an in-place activation would change the probe
    except Exception:  # a module that cannot take this input is no elementwise activation
        return None
    if not isinstance(output, torch.Tensor) or output.shape != probe.shape or not torch.isfinite(output).all():
        return None
    output = output.flatten()
    # Unbounded on a side when it still moves between the probe's last two points there (ReLU and
    # LeakyReLU do by hundreds, Tanh and Sigmoid not at all).
    low = -math.inf if abs(output[0] - output[1]) > 1 else float(output.min())
    high = math.inf if abs(output[-1] - output[-2]) > 1 else float(output.max())
    return low, high


def _last_module(module: nn.Module) -> nn.Module:
    leaves = [child for child in module.modules() if not list(child.children())]
    return leaves[-1] if leaves else module


def _last_layer(module: nn.Module) -> str:
    return type(_last_module(module)).__name__
