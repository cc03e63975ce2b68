"""Where a run trains and in which precision: the device a name stands for, the GPU each study worker
takes, and when bfloat16 autocast is on."""

from __future__ import annotations

import torch

from bench.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device '{name}' cannot train here; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def worker_device(name: str, worker: int) -> str:
    """The device of study worker ``worker`` (0, 1, ...): with 'auto' or 'cuda' on a machine with
    n GPUs, GPU ``worker`` mod n, so K workers spread over the GPUs and more than n share them
    (on one large GPU, several small trials side by side are what fills it); else ``name``."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{worker % torch.cuda.device_count()}"
    return name


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere the CPU emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and any(getattr(torch.cpu, probe, lambda: False)()
                                        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of training on ``device`` with ``amp`` (None: float32). 'auto' leaves
    the CPU in float32, the precision the suite's learning budgets are calibrated in, although on
    a CPU with native bfloat16 it reaches a given FID sooner (docs: Performance). 'on' where bfloat16
    is not native is refused."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if native_bf16(device):
        return torch.bfloat16
    if amp == "on":
        raise ConfigError(f"--amp on: {device} does not compute bfloat16 natively (emulated it is slower than "
                          "float32); use --amp auto or off")
    return None


