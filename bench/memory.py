"""What a training run needs in memory, estimated before it starts, against what its device has.

An image size or batch that cannot fit would otherwise fail minutes into the run, or take the
machine down with it: on a CPU the kernel's out-of-memory killer ends the process (or another one)
without a word. The estimate is a lower bound, so it refuses only what certainly cannot fit:

- the weights of G and D, their gradients and one optimiser moment: 12 bytes a parameter (Adam
  keeps two moments, RMSprop one);
- the activations one update keeps for its backward pass: every layer's output for G on a batch,
  and for D on a real and a fake batch, read from one forward pass of the variant's own networks
  on the meta device (shapes only, no memory, no arithmetic);
- on a GPU, the training split, which stays on the device as uint8.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import ConfigError
from bench.readers import kernel_text
from bench.registry import Variant

BYTES_PER_PARAMETER = 12
"""A weight, its gradient and one optimiser moment, in float32."""
GIB = 1024 ** 3


@dataclass(frozen=True)
class Need:
    """A training run's memory, in bytes, by what takes it."""

    weights: int
    activations: int
    data: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.data


def training_need(variant_cls: type[Variant], hparams: dict, image_shape: tuple[int, int, int], num_classes: int,
                  batch_size: int, *, value_bytes: int = 4, data_bytes: int = 0) -> Need | None:
    """The least memory one training step of ``variant_cls`` on ``batch_size`` images of ``image_shape``
    takes (``value_bytes`` an activation: 4 in float32, 2 under bfloat16 autocast), plus ``data_bytes``
    of data on the device; None where the variant's networks do not run on the meta device."""
    try:
        with torch.device("meta"):
            variant = variant_cls(image_shape, num_classes, **hparams)
            # Two images: batch norm refuses one in training mode. Per image, below.
            latent, labels = variant.latent(2), torch.zeros(2, dtype=torch.long)
            generated = _outputs(variant, lambda: variant.generate(latent, labels))
            discriminated = _outputs(variant, lambda: variant.discriminate(torch.zeros(2, *image_shape), labels))
    except Exception:  # a third-party network with data-dependent steps: no estimate, no refusal
        return None
    trained = sum(p.numel() for p in variant.parameters() if p.requires_grad)
    averaged = sum(p.numel() for p in variant.parameters() if not p.requires_grad)  # G's average: weights alone
    per_image = (generated + 2 * discriminated) // 2  # G on the fakes, D on the reals and the fakes
    return Need(weights=trained * BYTES_PER_PARAMETER + averaged * 4, activations=per_image * batch_size * value_bytes,
                data=data_bytes)


def _outputs(module: nn.Module, forward) -> int:
    """The values every leaf layer of ``module`` outputs during ``forward()``."""
    total = 0

    def count(layer, inputs, output) -> None:
        nonlocal total
        total += sum(t.numel() for t in (output if isinstance(output, (tuple, list)) else (output,))
                     if isinstance(t, torch.Tensor))

    hooks = [layer.register_forward_hook(count) for layer in module.modules() if not any(layer.children())]
    try:
        forward()
    finally:
        for hook in hooks:
            hook.remove()
    return total


def available(device: torch.device) -> tuple[int, str] | None:
    """(bytes this process may still allocate on ``device``, what bounds it); None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"{device} has"
    limits = []
    meminfo = _field("/proc/meminfo", "MemAvailable:")
    if meminfo is not None:
        limits.append((meminfo, "the machine has"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _field("/proc/self/status", "VmSize:")
    if soft != resource.RLIM_INFINITY and size is not None:
        limits.append((soft - size, "this process's address-space limit (ulimit -v) leaves"))
    limit, used = kernel_text("/sys/fs/cgroup/memory.max"), kernel_text("/sys/fs/cgroup/memory.current")
    if limit and used and limit.strip().isdigit() and used.strip().isdigit():
        limits.append((int(limit) - int(used), "this container's memory limit leaves"))
    return min(limits) if limits else None


def _field(path: str, name: str) -> int | None:
    """A size in kB from a /proc file, in bytes."""
    for line in (kernel_text(path) or "").splitlines():
        if line.startswith(name) and line.split()[1:2] and line.split()[1].isdigit():
            return int(line.split()[1]) * 1024
    return None


def check_fits(need: Need | None, device: torch.device, what: str) -> None:
    """Refuses a run whose least memory is more than ``device`` has left, with the figures and the fix."""
    room = available(device)
    if need is None or room is None or need.total <= room[0]:
        return
    free, bounded_by = room
    data = f", data {need.data / GIB:.1f}" if need.data else ""
    raise ConfigError(f"{what} needs at least {need.total / GIB:.1f} GiB (activations {need.activations / GIB:.1f}, "
                      f"weights and optimiser state {need.weights / GIB:.1f}{data}), and {bounded_by} "
                      f"{max(free, 0) / GIB:.1f} GiB free; lower --batch-size or --image-size")
