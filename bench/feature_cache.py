"""The real split's features and nearest-neighbour radii, cached on disk and checked before use."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from bench.classifier import file_stem
from bench.data import ImageDataset, seeded_draw, split_subset, to_unit_range
from bench.errors import ConfigError
from bench.features import SPOT_ROWS, FeatureExtractor
from bench.readers import UnreadableFile, load_tensors, regular_file
from bench.scores import NEAREST_K, nearest_neighbour_radii, spot_radii

PRECISION = "float32"
"""What scoring computes in, on every device (see :func:`bench.scoring.ieee_float32`): part of an entry's key."""
FEATURE_TOLERANCE = 1e-3
"""How far a cached feature row may be from the extractor's own, relative to its norm: float32 features
differ by about 1e-6 or less between batch sizes and devices; a damaged or edited row differs by far more."""


class FeatureCache:
    """The real split's features and their k-NN radii, on disk under ``folder``/real-features, so that
    trials and processes load them instead of recomputing them.

    The cache is ganbench's own, but its files may be damaged or copied from elsewhere: an entry is
    used only when it is a regular file of bounded size, read with ``weights_only``, whose key matches
    (dataset, split, sample count, the images' checksum, extractor and its weights, device type,
    precision), whose tensor has the expected shape and dtype, finite values in the extractor's range,
    and the checksum it was written with, and whose spot checks agree: a few rows recomputed by the
    extractor (features), or measured from the cached features (radii). An entry that fails is
    rebuilt, with one warning that names the file and the problem. A folder or a special file where an
    entry belongs is refused before any work (it cannot be replaced; a FIFO would block the read)."""

    def __init__(self, folder: Path | str, dataset: str, extractor: FeatureExtractor,
                 features_of: Callable[[Tensor], Tensor], device: torch.device | str):
        self.folder, self.dataset, self.extractor = Path(folder) / "real-features", dataset, extractor
        self.features_of, self.device = features_of, torch.device(device)

    def paths(self, real: ImageDataset, samples: int) -> tuple[Path, Path]:
        """The files of ``samples`` real images' features and radii."""
        name = self.extractor.name
        stem = (f"{file_stem(self.dataset)}-{real.split}-{samples}-{name}-{self.extractor.checksum[:12]}-"
                f"{self.device.type}-{PRECISION}")
        return self.folder / f"{stem}.pt", self.folder / f"{stem}-radii-k{NEAREST_K}.pt"

    def key(self, real: ImageDataset, samples: int) -> dict:
        # The images' own checksum: an image folder or a data root may change under the same name.
        # The device type and precision too: the same network gives features that differ in their
        # last digits on a CPU and a GPU, and a cache shared by both must not mix them.
        return {"dataset": split_subset(self.dataset)[0], "split": real.split, "samples": samples,  # NAME[N]: NAME's
                "images": hashlib.sha256(real.images[:samples].numpy().tobytes()).hexdigest(),
                "extractor": self.extractor.name, "checksum": self.extractor.checksum,
                "device": self.device.type, "precision": PRECISION}

    def load(self, real: ImageDataset, samples: int) -> tuple[Tensor, Tensor, str]:
        """The features and k-NN radii of ``samples`` real images on the device, and where they came from:
        "cache" or "computed" (then written to the cache). The images are the whole split, or where it has
        more a seeded uniform draw (:func:`~bench.data.seeded_draw`), which keeps its classes' shares."""
        if samples < len(real):
            chosen = seeded_draw(len(real), samples)
            real = dataclasses.replace(real, images=real.images[chosen], labels=real.labels[chosen])
        samples = len(real)
        features_path, radii_path = self.paths(real, samples)
        for path in (features_path, radii_path):
            self._check_replaceable(path)
        key = self.key(real, samples)
        spots = torch.linspace(0, samples - 1, min(SPOT_ROWS, samples)).round().long().unique()
        recomputed = spots[torch.linspace(0, len(spots) - 1, self.extractor.spot_rows(self.device)).round().long()]
        features = self._read(features_path, key, "features", (samples, self.extractor.num_features),
                              torch.float32, lambda cached: self._features_problem(cached, real, recomputed.unique()))
        if features is None:
            features = self.features_of(to_unit_range(real.images[:samples])).float()
            if not torch.isfinite(features).all():
                raise ConfigError(f"the {self.extractor.name} extractor gives non-finite features (NaN/Inf) for "
                                  f"the real images of '{self.dataset}': its weights {self.extractor.weights} "
                                  f"are damaged; {self.extractor.remedy}")
            self._write(features_path, key, "features", features)
            radii, source = None, "computed"  # radii of other features are not these features' radii
        else:
            radii_key = {**key, "nearest_k": NEAREST_K}
            radii = self._read(radii_path, radii_key, "radii", (samples,), torch.float64,
                               lambda cached: self._radii_problem(cached, features, spots))
            source = "cache"
        if radii is None:
            radii = nearest_neighbour_radii(features)
            self._write(radii_path, {**key, "nearest_k": NEAREST_K}, "radii", radii)
        return features.to(self.device), radii.to(self.device), source

    def _check_replaceable(self, path: Path) -> None:
        """Refuses a folder or a special file at ``path``: an entry cannot be written over it, and
        reading a FIFO would wait for a writer for ever."""
        if path.is_symlink() and not path.exists():
            return  # a link that leads nowhere: the new entry replaces the link
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return
        except OSError:
            return  # unreadable: the read says why, and the entry is rebuilt
        if not stat.S_ISREG(mode):
            regular_file(path, "the real-feature cache entry", f"remove it (rm -r '{path}'), and ganbench "
                                                               f"rebuilds the entry")

    def _read(self, path: Path, key: dict, field: str, shape: tuple[int, ...], dtype: torch.dtype,
              consistent: Callable[[Tensor], str | None]) -> Tensor | None:
        """The tensor of a valid entry at ``path``, on the CPU; None (with one warning naming the
        file and the problem) where there is none to use."""
        if not path.exists():
            return None
        tensor, problem = self._checked(path, key, field, shape, dtype, consistent)
        if problem is None:
            return tensor
        warnings.warn(f"real-feature cache {path} {problem}; rebuilding it", stacklevel=2)
        return None

    def _checked(self, path: Path, key: dict, field: str, shape: tuple[int, ...], dtype: torch.dtype,
                 consistent: Callable[[Tensor], str | None]) -> tuple[Tensor | None, str | None]:
        """The entry's tensor and None, or None and what is wrong with the entry."""
        try:
            size = path.stat().st_size
            if size > math.prod(shape) * dtype.itemsize + 2 ** 20:  # the tensor, its key, the archive's headers
                return None, f"holds {size:,} bytes, more than {field} of shape {shape} take"
            cached = load_tensors(path, "real-feature cache", "rebuilding it")
        except UnreadableFile as exc:  # the reader's line: "real-feature cache PATH <problem>; rebuilding it"
            return None, str(exc).removeprefix(f"real-feature cache {path} ").removesuffix("; rebuilding it")
        except OSError as exc:  # gone or unreadable since it was found
            return None, f"is unreadable ({exc.strerror or type(exc).__name__})"
        if not isinstance(cached, dict) or not {"key", field} <= cached.keys():
            return None, f"is not a cache entry (a dictionary of key, {field} and sha256)"
        if "sha256" not in cached:
            return None, "was written by an older ganbench (no checksum)"
        if not same_key(cached["key"], key):
            return None, "was computed for other images, another extractor or another device"
        tensor = cached[field]
        if not isinstance(tensor, Tensor) or tensor.layout != torch.strided or tensor.is_quantized:
            return None, f"holds no {field} tensor"
        if tensor.dtype != dtype:
            return None, (f"holds {field} of dtype {str(tensor.dtype).removeprefix('torch.')}, not "
                          f"{str(dtype).removeprefix('torch.')}")
        if tuple(tensor.shape) != shape:
            return None, f"holds {field} of shape {tuple(tensor.shape)}, not {shape}"
        low, high = (value.item() for value in torch.aminmax(tensor)) if tensor.numel() else (0.0, 0.0)
        if not (math.isfinite(low) and math.isfinite(high)):  # a NaN anywhere makes both NaN
            return None, f"holds non-finite {field} (NaN/Inf)"
        if low < 0 and (field == "radii" or self.extractor.nonnegative):
            return None, f"holds negative {field}" + (f" (the {self.extractor.name} extractor's never are)"
                                                      if field == "features" else "")
        if cached["sha256"] != tensor_sha256(tensor):
            return None, f"holds {field} that do not match their checksum (damaged or edited since written)"
        tensor = tensor.detach()
        problem = consistent(tensor)
        return (tensor, None) if problem is None else (None, problem)

    def _features_problem(self, cached: Tensor, real: ImageDataset, spots: Tensor) -> str | None:
        """Whether a few cached rows are the extractor's features of their images."""
        own = self.features_of(to_unit_range(real.images[spots])).float().cpu()
        norms = own.norm(dim=1)
        off = (cached[spots] - own).norm(dim=1) / norms.clamp_min(norms.mean().item() + 1e-12)
        if off.max() > FEATURE_TOLERANCE:
            row = int(spots[off.argmax()])
            return (f"holds features that are not the {self.extractor.name} extractor's for their images (row "
                    f"{row} is off by {off.max().item():.3g} of its norm)")
        return None

    @staticmethod
    def _radii_problem(cached: Tensor, features: Tensor, spots: Tensor) -> str | None:
        """Whether a few cached radii are the k-NN distances of the cached features."""
        measured = spot_radii(features, spots)
        tolerance = 1e-6 * measured + 1e-7 * torch.linalg.vector_norm(features, dim=1).max().double()
        off = (cached[spots] - measured).abs()
        if (off > tolerance).any():
            worst = int((off - tolerance).argmax())
            return (f"holds radii that are not the cached features' {NEAREST_K}-NN distances (row "
                    f"{int(spots[worst])}: {cached[spots[worst]].item():.6g}, not {measured[worst].item():.6g})")
        return None

    def _write(self, path: Path, key: dict, field: str, tensor: Tensor) -> None:
        """Writes an entry atomically (a concurrent reader sees the old file or the whole new one); one
        that cannot be written is warned about, and scoring goes on without it."""
        tensor = tensor.cpu()
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{id(self)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, field: tensor, "sha256": tensor_sha256(tensor)}, tmp)
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            warnings.warn(f"real-feature cache {path} cannot be written ({exc.strerror or type(exc).__name__}); "
                          f"scoring goes on without caching it", stacklevel=4)


def tensor_sha256(tensor: Tensor) -> str:
    """The sha256 of a CPU tensor's values."""
    return hashlib.sha256(tensor.detach().reshape(-1).contiguous().numpy().view("uint8")).hexdigest()


def same_key(cached: object, key: dict) -> bool:
    """Whether a cache entry's key (read from a file: any plain value) is ``key``, entry by entry and
    type by type (a tensor in its place compares as False, not as an error)."""
    return (isinstance(cached, dict) and cached.keys() == key.keys()
            and all(type(cached[name]) is type(value) and cached[name] == value for name, value in key.items()))
