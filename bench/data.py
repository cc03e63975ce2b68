"""Datasets as one uint8 tensor, and batches drawn from it on the training device.

Every dataset loads once into (N, C, H, W) uint8 images and (N,) int64 labels. The sampler
keeps them on the training device and scales each batch to [-1, 1] (the range of a Tanh
generator) there, so the hot loop has no DataLoader, no PIL and no per-image transform.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import readers
from bench.checkpoint import is_count
from bench.errors import ConfigError, DatasetNotFound, SubsetTooLarge
from bench.locations import DATA_ROOT
from bench.readers import UnreadableFile
from bench.scores import check_samples
from bench.torchvision_files import SIDES, TORCHVISION_FOLDERS, read_cifar10, read_mnist_family

SPLITS = ("train", "test")
DATASETS = ("fashion-mnist", "digits", "mnist", "cifar10", "imagefolder:PATH")
IMAGE_FOLDER = re.compile(r"imagefolder(?:@([1-9][0-9]*))?:(.+)", re.DOTALL | re.ASCII)
"""An image folder's name: ``imagefolder:PATH``, or ``imagefolder@SIDE:PATH`` for its images resized
to SIDE x SIDE on load (``--image-size``); resized, it is another dataset, scored and ranked apart."""
SUBSET = re.compile(r"(.+)\[([1-9][0-9]*)\]", re.DOTALL | re.ASCII)
"""A subset's name, ``NAME[N]`` (``--subset N``): N images of NAME's training split, drawn once (SUBSET_SEED),
as evenly across its classes as their sizes allow; its test split is NAME's whole. It is another dataset
wherever results are grouped (trials, leaderboards, comparisons); the real statistics it is scored against
and its domain classifier are NAME's, the same images."""
SUBSET_SEED = 0


@dataclass(frozen=True)
class ImageDataset:
    """A whole split in memory: images (N, C, H, W) uint8, labels (N,) int64."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)


def batch_fix(images: int, option: str) -> str:
    """What to do about a batch larger than a dataset of ``images``: lower ``option``, unless no
    batch fits (two images at least)."""
    return f"lower {option}" if images >= 2 else "a batch needs 2 images or more: add images"


def check_scoring_split(real: ImageDataset) -> None:
    """ConfigError unless generated images can be scored against ``real``, the split they are compared with."""
    folder = " (an image folder's test split is PATH/test, else PATH/train, else PATH)" if \
        IMAGE_FOLDER.match(real.name) else ""
    check_samples(f"the {real.split} split of '{real.name}', which samples are scored against, holds", len(real),
                  f"; add images to it{folder}")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def load_dataset(name: str, split: str = "train", *, root: Path | str | None = None,
                 download: bool = False) -> ImageDataset:
    """Loads ``name`` (fashion-mnist, digits, mnist, cifar10, imagefolder:PATH).

    Nothing is downloaded unless ``download=True``; a missing dataset raises DatasetNotFound
    naming where it looked and the command that gets it.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    check_dataset_name(name)
    whole, size = split_subset(name)
    if size is not None:
        data = load_dataset(whole, split, root=root, download=download)
        if split == "test":
            return ImageDataset(name, split, data.images, data.labels, data.num_classes)
        if size > len(data):
            raise SubsetTooLarge(f"subset {size} is larger than the {len(data):,} training images of '{whole}'; "
                              f"choose at most {len(data):,}")
        keep = balanced_subset(data.labels, size)
        return ImageDataset(name, split, data.images[keep], data.labels[keep], data.num_classes)
    root = Path(root) if root is not None else DATA_ROOT
    if name in TORCHVISION_FOLDERS:
        images, labels = read_mnist_family(name, split, root, download)
    elif name == "digits":
        images, labels = _digits(split)
    elif name == "cifar10":
        images, labels = read_cifar10(split, root, download)
    else:
        side, path = IMAGE_FOLDER.fullmatch(name).groups()
        images, labels = _image_folder(Path(path), split, int(side) if side else None)
    return ImageDataset(name, split, images, labels, int(labels.max()) + 1)


def load_image_folder(path: Path | str) -> ImageDataset:
    """The images in the folder ``path`` (directly in it or in sub-folders), read as an image folder dataset
    is: any name, a path ending in [N] included (no subset is drawn)."""
    images, labels = _image_folder(Path(path), "train")
    return ImageDataset(f"imagefolder:{path}", "train", images, labels, int(labels.max()) + 1)


def split_subset(name: str) -> tuple[str, int | None]:
    """(the whole dataset's name, the subset's size) for ``NAME[N]``; (name, None) for any other name."""
    subset = SUBSET.fullmatch(name)
    return (subset[1], int(subset[2])) if subset else (name, None)


def with_subset(name: str, size: int | None) -> str:
    """``name`` restricted to ``size`` training images (``--subset``, a study's ``subset``): ``NAME[N]``."""
    if size is None:
        return name
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"subset must be a positive number of training images, got {size!r}")
    if split_subset(name)[1] is not None:
        raise ConfigError(f"'{name}' is a subset already; give the whole dataset's name with --subset")
    subset = f"{name}[{size}]"
    check_dataset_name(subset)
    return subset


def seeded_draw(count: int, size: int) -> torch.Tensor:
    """The sorted indices of ``size`` of ``count`` images, a uniform draw without replacement, the same on every
    machine: where a scoring takes fewer images than a folder holds, the first files of a folder read class by
    class would be a few classes."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(0))[:size].sort().values


def balanced_subset(labels: torch.Tensor, size: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """The sorted indices of ``size`` images, drawn without replacement as evenly across the classes of
    ``labels`` as their sizes allow (one class: a uniform draw), the same for a given seed on every machine:
    each class's images are shuffled, then dealt in turn, a class at a time, in a shuffled class order."""
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    order = torch.randperm(len(classes), generator=generator)
    keys, members = [], []
    for position, label in enumerate(classes[order].tolist()):
        chosen = torch.nonzero(labels == label).flatten()
        members.append(chosen[torch.randperm(len(chosen), generator=generator)])
        keys.append(torch.arange(len(chosen)) * len(classes) + position)  # the turn in which each is dealt
    dealt = torch.cat(members)[torch.cat(keys).argsort()]
    return dealt[:size].sort().values


def check_dataset_name(name: str) -> None:
    name = split_subset(name)[0]
    folder = IMAGE_FOLDER.fullmatch(name)
    if name not in DATASETS[:-1] and not folder:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}, imagefolder@SIDE:PATH")
    if folder and folder[1] and int(folder[1]) not in SIDES:
        raise ConfigError(f"image size {int(folder[1])} is out of range; give a side from {SIDES[0]} to {SIDES[-1]} "
                          "pixels (28, 32 and 64 fit every network)")


def resized(name: str, side: int | None) -> str:
    """``name`` (an image folder) with its images resized to ``side`` on load: ``--image-size``."""
    if side is None:
        return name
    folder = IMAGE_FOLDER.fullmatch(name)
    if not folder:
        raise ConfigError(f"--image-size resizes image folders; '{name}' is not one (imagefolder:PATH)")
    resized_name = f"imagefolder@{side}:{folder[2]}"
    check_dataset_name(resized_name)
    return resized_name


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    values, labels = _digits_file()
    images = np.rint(values.reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)
    # scikit-learn ships no split: every fifth image is held out, the same on every machine.
    keep = (np.arange(len(images)) % 5 == 0) == (split == "test")
    return torch.from_numpy(images[keep].copy()), torch.from_numpy(labels[keep])


def _digits_file() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 64) pixel values 0-16 and (1797,) labels, read from the file that
    ``sklearn.datasets.load_digits`` reads, without importing scikit-learn's dataset loaders (and the
    rest of scikit-learn they pull in) into every process that uses digits; through ``load_digits``
    where the file is not there."""
    file = _digits_path()
    if file is None or not file.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target.astype(np.int64)
    table = np.loadtxt(file, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _digits_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


GRAYSCALE_MODES = ("1", "L", "LA")
"""Pillow's grayscale modes that convert to 8-bit "L" as they are (16-bit images are rescaled first)."""
SKIPPED_NAMES = ("__MACOSX",)
"""Folders that archivers add (and any name starting with '.'): never a class, never an image."""


def _listed(folder: Path) -> list[Path]:
    """``folder``'s entries, sorted, less hidden ones (a leading '.') and SKIPPED_NAMES."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith(".")
                  and entry.name not in SKIPPED_NAMES)


def _some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names``, then '...' if there are more: a message's examples."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _eight_bit(image, file: Path):
    """``image`` with 8 bits a channel: 16-bit grayscale rescaled (65,535 to 255), since converting it
    would clip every value above 255 to white; 32-bit integer or float pixels refused: their range is
    not written in the file."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.float64) * (255 / 65535)
        return Image.fromarray(np.rint(pixels).astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        kind = "32-bit or signed integer" if image.mode == "I" else "floating-point"
        raise ConfigError(f"{file} has {kind} pixels (mode {image.mode}), whose range the file does not say; "
                          "save the images with 8 or 16 bits a channel (PNG, for instance)")
    return image


def _split_folder(path: Path, split: str) -> Path:
    """Where ``split``'s images are: PATH/train and PATH/test when PATH is split so (a split without its
    folder reads PATH/train), else PATH. A split folder beside other sub-folders, or test/ without
    train/, is refused: which of them hold classes would be a guess."""
    entries = _listed(path)
    splits = [entry.name for entry in entries if entry.name in SPLITS and entry.is_dir()]
    if not splits:
        return path
    others = [entry.name for entry in entries if entry.name not in SPLITS
              and (entry.is_dir() or entry.suffix.lower() in IMAGE_SUFFIXES)]
    if others:
        raise ConfigError(f"{path} holds {' and '.join(f'{name}/' for name in splits)} beside other images or folders "
                          f"({_some(others)}): a folder split into "
                          "train/ and test/ holds only those (each with its images, or a sub-folder per class); move "
                          "the others into them, or rename a class folder called train or test")
    if "train" not in splits:
        raise ConfigError(f"{path} holds test/ but no train/; put the training images in {path / 'train'}")
    return path / split if split in splits else path / "train"


def _image_folder(path: Path, split: str, side: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PATH/<class>/ images (labelled by sub-folder), or images directly in PATH (one class), or
    PATH/train and PATH/test holding either when those exist (a split without its folder reads
    PATH/train when there is one, else PATH). Hidden entries (a leading '.') and archivers' __MACOSX
    folders are not read; a folder with both images and sub-folders, or a class folder without
    images, is refused rather than read in part.

    Images are decoded once, here: grayscale when every image is, else RGB; with ``side``, each is
    scaled (bicubic, antialiased) until its shorter side is ``side`` and its centre cropped square,
    else every image must be square and of one size. A file that does not decode is skipped and
    counted, never a traceback.
    """
    from PIL import Image, ImageOps
    from tqdm.auto import tqdm

    fix = "pass imagefolder:PATH with the images in PATH or in one sub-folder per class"
    try:
        exists = path.is_dir()
    except OSError as exc:  # a name too long for the file system
        raise ConfigError(f"cannot open the image folder {str(path)[:80]} ({exc.strerror}); {fix}") from None
    if not exists:
        raise DatasetNotFound(f"image folder {path} does not exist; {fix}")
    if os.statvfs(path).f_blocks == 0:  # /proc, /sys: no disk behind them, and links that loop (a walk never ends)
        raise ConfigError(f"{path} is on a virtual file system, not a folder of images; {fix}")
    folder = path
    try:
        folder = _split_folder(path, split)
        entries = _listed(folder)
        classes = [entry.name for entry in entries if entry.is_dir()]
        files = ([(file, label) for label, name in enumerate(classes) for file in _listed(folder / name)]
                 if classes else [(file, 0) for file in entries])
        files = [(file, label) for file, label in files if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file()]
        loose = [entry.name for entry in entries if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file()]
    except PermissionError as exc:  # a folder this user may not list, or look into
        denied = exc.filename or folder
        raise UnreadableFile(f"image folder {denied} cannot be read (permission denied); give this user read "
                             f"access (chmod -R u+rX {denied}), or {fix}") from None
    if classes and loose:
        raise ConfigError(f"{folder} holds both images ({_some(loose, 2)}) and sub-folders ({_some(classes)}), which "
                          "would be read as classes, leaving the images out; move the images into a sub-folder of "
                          "their class, or the sub-folders out")
    if not files:
        raise DatasetNotFound(f"no images in {folder} (files ending {', '.join(IMAGE_SUFFIXES)}); {fix}")
    empty = sorted(set(classes) - {classes[label] for _, label in files}) if classes else []
    if empty:
        raise ConfigError(f"the class folder {folder / empty[0]} holds no images (files ending "
                          f"{', '.join(IMAGE_SUFFIXES)}), so its class would have none; add its images or remove it")
    decoded, unreadable = [], 0
    # A bar for a long decode on a terminal (disable=None), none in a log file.
    for file, label in tqdm(files, desc=f"decoding {folder.name}", unit="image", leave=False,
                            disable=True if len(files) < 1000 else None):
        if not os.access(file, os.R_OK):  # a permission to fix, not a file to skip
            raise UnreadableFile(f"image {file} cannot be read (permission denied); give this user read access "
                                 f"(chmod -R u+rX {folder}), or remove it")
        try:
            image = readers.open_image(file, "image", fix)
        except UnreadableFile:  # truncated, not an image, too large, not a file on a disk
            unreadable += 1
            continue
        decoded.append((_eight_bit(image, file), label))
    if unreadable:
        warnings.warn(f"{unreadable} of {len(files)} files in {folder} are not readable images; skipped them",
                      stacklevel=3)
    if not decoded:
        raise DatasetNotFound(f"none of the {len(files)} image files in {folder} decodes; {fix}")
    mode = "L" if all(image.mode in GRAYSCALE_MODES for image, _ in decoded) else "RGB"
    decoded = [(image.convert(mode), label) for image, label in decoded]
    if side:
        decoded = [(ImageOps.fit(image, (side, side), Image.Resampling.BICUBIC), label) for image, label in decoded]
    resize = "; pass --image-size N to resize them on load (imagefolder@N:PATH in a study file)"
    sizes = {image.size for image, _ in decoded}
    if len(sizes) > 1:
        raise ConfigError(f"images in {folder} differ in size ({', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:3])}"
                          f"{', ...' if len(sizes) > 3 else ''}){resize}")
    (width, height), = sizes
    if width != height:
        raise ConfigError(f"images in {folder} are {width}x{height}, not square{resize}, scaled and centre-cropped")
    images = np.stack([np.asarray(image) for image, _ in decoded])
    images = images[:, None] if mode == "L" else images.transpose(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in decoded], dtype=torch.int64)
    return torch.from_numpy(np.ascontiguousarray(images)), labels


class BatchSampler:
    """Random batches without replacement, one shuffled pass (epoch) after another.

    Images stay uint8 on ``device``; a batch is an index into them, scaled to [-1, 1] on the
    device. Shuffles come from a seeded CPU generator, so a run is reproducible and its state
    can be checkpointed and restored exactly.
    """

    def __init__(self, dataset: ImageDataset, device: torch.device, seed: int):
        self.images = dataset.images.to(device, memory_format=torch.channels_last)
        self.labels = dataset.labels.to(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(dataset), generator=self.generator).to(device)
        self.position = 0

    def check(self, n: int) -> None:
        if n > len(self.order):
            raise ConfigError(f"batch of {n} is larger than the dataset ({len(self.order)} images); "
                              f"{batch_fix(len(self.order), '--batch-size')}")

    def next(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of ``n`` images (n, C, H, W) in [-1, 1] and their labels (n,)."""
        self.check(n)
        if self.position + n > len(self.order):
            self.order = torch.randperm(len(self.order), generator=self.generator).to(self.images.device)
            self.position = 0
        index = self.order[self.position: self.position + n]
        self.position += n
        return to_unit_range(self.images[index]), self.labels[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.cpu(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Goes on from a saved state; ValueError when it is not this dataset's (a shuffled order of its
        images and a position within it)."""
        order, position = state["order"], state["position"]
        if not (isinstance(order, torch.Tensor) and order.dtype == torch.int64 and order.shape == self.order.shape
                and torch.equal(order.sort().values, torch.arange(len(order)))):
            raise ValueError(f"the sampler's order is not a shuffle of this dataset's {len(self.order)} images")
        if not (is_count(position) and position <= len(order)):
            raise ValueError(f"the sampler's position {position!r} is not within its {len(order)} images")
        self.generator.set_state(state["generator"])
        self.order, self.position = order.to(self.images.device), position
