"""The one checkpoint format: written by the engine, read by resume, `bench eval` and anything
else that loads a run.

A checkpoint may come from a teammate's tracking server, so it is untrusted input: it holds only
tensors and plain containers (the run's config as a dict), it is read with
``torch.load(weights_only=True)``, which refuses any other Python object instead of running
its code, and what it holds is checked before anything uses it. A file that is not a ganbench
checkpoint is refused with one line that names it and says what it is not.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Iterator, TypedDict, get_type_hints

import torch

from bench import readers
from bench.errors import ConfigError

FILENAME = "checkpoint.pt"
FORMAT = "ganbench-checkpoint"
VERSION = 2


class State(TypedDict):
    """What a checkpoint holds: the weights and every state that resumes the run exactly. The
    engine writes one (``State(...)``); :func:`load` checks each field against its type here."""

    config: dict
    """The run's TrainConfig, as a dict."""
    step: int
    image_shape: list | tuple
    num_classes: int
    variant: dict
    """The variant's state_dict: its networks, and any state of its own."""
    optimizers: dict
    sampler: dict
    """The batch sampler's position in its epoch."""
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    """Only the training GPU's stream: a retry may run on another GPU, or on a machine with fewer."""
    rows: list
    """The losses logged so far."""
    evaluations: list
    findings: list
    observers: dict
    """Each named observer's state, by its name."""


FIELDS: dict[str, type] = get_type_hints(State)


class NotACheckpoint(ConfigError):
    """A file or folder that is not a readable ganbench checkpoint."""


def locate(path: Path | str) -> Path:
    """The checkpoint file of a run folder, or ``path`` itself when it names a file."""
    path = Path(path)
    return path / FILENAME if path.is_dir() else path


def save(state: State, path: Path) -> None:
    """Writes ``state`` to ``path`` atomically: a crash or a full disk mid-write leaves the previous
    checkpoint, never half a file."""
    if state.keys() != FIELDS.keys():  # what is written is what load checks
        raise TypeError(f"a checkpoint holds exactly the fields of State, got {sorted(state)}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        # Serialised in memory, then written: a full disk is then an OSError with its errno (torch's zip
        # writer, writing to a file, buries it under an "enforce fail" RuntimeError of its own).
        serialised = io.BytesIO()
        torch.save({"format": FORMAT, "version": VERSION, **state}, serialised)
        with tmp.open("wb") as handle:
            handle.write(serialised.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())  # on the disk before it replaces the previous checkpoint
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # what a full disk or an interruption left of it
        raise


def load(path: Path | str) -> State:
    """The state saved in a checkpoint file or run folder, checked to be a ganbench checkpoint,
    with every tensor on the CPU whatever device wrote it (load_state_dict moves weights to the
    training device; RNG states must stay on the CPU)."""
    given = Path(path)
    path = locate(given)
    try:
        present = os.path.lexists(path)
    except OSError:  # a name too long: regular_file below says so
        present = True
    if not present:
        if given.is_dir():
            raise NotACheckpoint(f"{given} holds no {FILENAME}: pass a run folder written by `bench train` "
                                 "(or a study trial) or the checkpoint file itself")
        raise NotACheckpoint(f"no checkpoint at {path}; pass a run folder written by `bench train` or its {FILENAME}")
    # Missing, a folder, a FIFO, a device, /proc, no read permission: refused as what the file is.
    try:
        readers.regular_file(path, "checkpoint", f"pass a run folder written by `bench train` or its {FILENAME}")
    except readers.UnreadableFile as exc:
        raise NotACheckpoint(str(exc)) from None
    try:
        state = readers.load_tensors(path, "checkpoint", COPY_AGAIN)
    except readers.UnreadableFile as exc:  # empty, truncated, not torch, Python objects that could run code
        raise NotACheckpoint(_not_a_checkpoint(path, str(exc))) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NotACheckpoint(f"{path} is a torch file but not a ganbench checkpoint (it has no '{FORMAT}' "
                             "marker); pass a run folder written by `bench train` or its checkpoint")
    version = state.get("version")
    if not isinstance(version, int):  # a tensor would compare elementwise
        version = None
    if version == 1:
        state = _from_version_1(state)
    elif version != VERSION:
        raise NotACheckpoint(f"{path} is a ganbench checkpoint of format version {state.get('version')!r}; "
                             f"this ganbench reads versions 1 and {VERSION}")
    for key, kind in FIELDS.items():
        if not isinstance(state.get(key), kind):
            raise NotACheckpoint(f"{path} is a damaged ganbench checkpoint: '{key}' is missing or of the wrong "
                                 "type; use another checkpoint of the run")
    problem = _contents_problem(state)
    if problem:
        raise NotACheckpoint(f"{path} is a damaged ganbench checkpoint: {problem}; use another checkpoint of the run")
    diverged = _non_finite_weights(state["variant"])
    if diverged:
        raise NotACheckpoint(f"{path} is a checkpoint whose weights hold NaN/Inf ({', '.join(diverged[:3])}"
                             f"{', ...' if len(diverged) > 3 else ''}): the run diverged before this checkpoint; "
                             "use an earlier checkpoint of the run, or retrain")
    return state


def _non_finite_weights(weights: dict, prefix: str = "") -> list[str]:
    """The names of the floating-point tensors in ``weights`` (nested dicts too) holding NaN or Inf."""
    found = []
    for key, value in weights.items():
        if isinstance(value, dict):
            found += _non_finite_weights(value, f"{prefix}{key}.")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            found.append(f"{prefix}{key}")
    return found


COPY_AGAIN = "copy it again from where the run was trained"


def _not_a_checkpoint(path: Path, refusal: str) -> str:
    """The readers' refusal of what a regular file ``path`` holds, said as what it is not."""
    named = f"checkpoint {path} "
    return f"{path} is not a ganbench checkpoint: it {refusal[len(named):]}" if refusal.startswith(named) else refusal


def _from_version_1(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 state in version 2's fields. Version 1 gave the doctor a field of its own (None
    when it was off), whose state also held the run's findings."""
    doctor = state.pop("doctor", None)
    return {**state, "version": VERSION, "observers": {} if doctor is None else {"doctor": doctor},
            "findings": doctor.get("findings") if isinstance(doctor, dict) else []}


MAX_SIDE = 4096
MAX_CHANNELS = 4


def is_count(value: Any) -> bool:
    """A non-negative int that is not a bool (True is an int to Python, not a step count to us)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_table(rows: list) -> bool:
    """Rows as the engine writes them: dicts of numbers by name, each with its integer 'step'."""
    return all(isinstance(row, dict) and is_count(row.get("step")) and
               all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                   for k, v in row.items()) for row in rows)


def _contents_problem(state: dict[str, Any]) -> str | None:
    """What is wrong inside a checkpoint whose fields have the right types, before anything is built from it
    (a huge image shape or class count would otherwise allocate first and fail after)."""
    shape = state["image_shape"]
    if not (len(shape) == 3 and all(is_count(n) and n > 0 for n in shape) and shape[0] <= MAX_CHANNELS
            and max(shape[1:]) <= MAX_SIDE):
        return (f"'image_shape' is {shape!r}, not [channels, height, width] with 1-{MAX_CHANNELS} channels and "
                f"sides of 1-{MAX_SIDE} pixels")
    if not is_count(state["num_classes"]):
        return f"'num_classes' is {state['num_classes']!r}, not a count"
    if not is_count(state["step"]):
        return f"'step' is {state['step']!r}, not a count"
    if not _is_table(state["rows"]) or len(state["rows"]) != state["step"]:
        return f"'rows' is not the loss table of its {state['step']} steps"
    if not _is_table(state["evaluations"]):
        return "'evaluations' is not a table of scores by step"
    return None


@contextlib.contextmanager
def damaged(path: Path) -> Iterator[None]:
    """Turns what goes wrong while applying a loaded state (a missing key, a tensor of the wrong
    shape, a config field this ganbench does not know) into one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ConfigError) as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise NotACheckpoint(f"{path} is a damaged or incompatible ganbench checkpoint ({detail}); use another "
                             "checkpoint of the run, or the ganbench version that wrote it") from None
