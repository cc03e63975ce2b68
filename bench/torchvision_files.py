"""Datasets in torchvision's layouts, read and checked by ganbench: MNIST and Fashion-MNIST from IDX
files (Debian's Fashion-MNIST first) or legacy processed files, CIFAR-10 from its pickled batches
(through an unpickler that knows numpy's arrays only), and their download."""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import warnings
from pathlib import Path

import numpy as np
import torch

from bench import readers
from bench.errors import ConfigError, DatasetNotFound
from bench.readers import UnreadableFile

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's dataset-fashion-mnist package installs its IDX files."""
SIDES = range(8, 1025)
"""The image sides ganbench trains on, for every dataset."""
MAX_DATASET_BYTES = 2 ** 30
"""The most bytes one dataset file may hold once unpacked (MNIST's training images are 47 MB)."""
MAX_LABEL = 255
"""The largest class label a torchvision-layout dataset may hold: a byte, as in IDX label files."""
IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "16-bit integers", 0x0C: "32-bit integers",
             0x0D: "32-bit floats", 0x0E: "64-bit floats"}
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
"""Where torchvision keeps each of the MNIST family under a data root: ROOT/<folder>/raw/ (the IDX files,
gzipped or not) and, from torchvision before 0.8, ROOT/<folder>/processed/{training,test}.pt."""
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = {"train": tuple(f"data_batch_{n}" for n in range(1, 6)), "test": ("test_batch",)}
CIFAR_SIDE = 32
REFETCH = "copy the dataset's files there again, or delete them and rerun with --download (needs internet)"


def read_idx(path: Path, ndim: int, what: str, fix: str) -> np.ndarray:
    """The array of an IDX file (the MNIST family's format), gzipped or not, when its header says it
    holds unsigned bytes in ``ndim`` dimensions (3: images, height, width; 1: labels) and the file
    holds exactly the bytes its header announces. Else UnreadableFile naming ``what`` and the ``fix``."""
    data = readers.read_bytes(path, what, fix, limit=MAX_DATASET_BYTES)
    named = f"{what} {path}"
    if not data:
        raise UnreadableFile(f"{named} is empty (an interrupted copy?); {fix}")
    if len(data) < 4 or data[:2] != b"\0\0":
        raise UnreadableFile(f"{named} is not an IDX file (it does not begin with an IDX magic number); {fix}")
    if data[2] != 0x08:
        kind = IDX_TYPES.get(data[2], f"values of the unknown IDX type 0x{data[2]:02X}")
        raise UnreadableFile(f"{named} holds {kind}, not the unsigned bytes of an MNIST-family IDX file; {fix}")
    if data[3] != ndim:
        meant = "images, height and width" if ndim == 3 else "one label per image"
        dimensions = "1 dimension" if data[3] == 1 else f"{data[3]} dimensions"
        raise UnreadableFile(f"{named} has {dimensions}, not {ndim} ({meant}); {fix}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UnreadableFile(f"{named} is truncated: {len(data)} bytes, shorter than its {header}-byte header; {fix}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    announced, held = math.prod(shape), len(data) - header
    if not announced:
        raise UnreadableFile(f"{named} holds nothing (its header says {_shape(shape)}); {fix}")
    if held < announced:
        raise UnreadableFile(f"{named} is truncated: its header announces {_shape(shape)} = {announced:,} bytes, "
                             f"the file holds {held:,}; {fix}")
    if held > announced:
        raise UnreadableFile(f"{named} holds {held - announced:,} bytes more than the {_shape(shape)} its header "
                             f"announces (not an IDX file, or a damaged one); {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(f"{n:,}" for n in shape)


def _checked_split(images: torch.Tensor, labels: torch.Tensor, where: str, fix: str) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """(N, C, H, W) uint8 images and (N,) int64 labels of a torchvision-layout root, when they can
    train: square images with sides in SIDES, one label each, every label within 0..MAX_LABEL."""
    _, _, height, width = images.shape
    if height != width or height not in SIDES:
        raise ConfigError(f"{where} holds images of {height}x{width} pixels; ganbench trains on square images with "
                          f"sides of {SIDES[0]} to {SIDES[-1]} pixels; {fix}")
    if len(labels) != len(images):
        raise ConfigError(f"{where} holds {len(images):,} images but {len(labels):,} labels, not one label per "
                          f"image; {fix}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > MAX_LABEL:
        raise ConfigError(f"{where} holds labels from {low} to {high}; class labels run from 0 to at most "
                          f"{MAX_LABEL}; {fix}")
    return images.contiguous(), labels.to(torch.int64)


def _present(path: Path) -> bool:
    """Whether anything is at ``path`` (a link that leads nowhere too: its reader says so). A path
    this user may not look into counts as present, so that its reader names the permission."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _idx_split(folder: Path, prefix: str, title: str, fix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The images and labels of the IDX files ``prefix``-images-idx3-ubyte and -labels-idx1-ubyte
    (each as it is or gzipped) in ``folder``; None when neither is there."""
    found = {}
    for kind, ndim in (("images", 3), ("labels", 1)):
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        found[kind] = next((path for path in (folder / name, folder / f"{name}.gz") if _present(path)), None)
    if found["images"] is None and found["labels"] is None:
        return None
    for kind, ndim in (("images", 3), ("labels", 1)):
        if found[kind] is None:
            raise DatasetNotFound(f"{title} in {folder} has no {kind} file ({prefix}-{kind}-idx{ndim}-ubyte[.gz]) "
                                  f"beside its {'labels' if kind == 'images' else 'images'}; {fix}")
    images = torch.from_numpy(read_idx(found["images"], 3, f"{title} images file", fix).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(found["labels"], 1, f"{title} labels file", fix).astype(np.int64))
    return _checked_split(images, labels, f"{title} in {folder}", fix)


def _legacy_split(path: Path, title: str, fix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision < 0.8 ``processed/training.pt`` or ``test.pt``: (uint8 images N x H x W, labels N),
    read with weights_only (a file holding code is refused unread)."""
    what = f"{title} file"
    held = readers.load_tensors(path, what, fix)
    if not (isinstance(held, (tuple, list)) and len(held) == 2 and all(isinstance(t, torch.Tensor) for t in held)):
        raise UnreadableFile(f"{what} {path} holds {_described(held)}, not the (images, labels) tensors torchvision "
                             f"saved there; {fix}")
    images, labels = held
    if images.dtype != torch.uint8 or images.dim() != 3 or 0 in images.shape:
        raise UnreadableFile(f"{what} {path} holds images of {images.dtype} {tuple(images.shape)}, not uint8 images "
                             f"x height x width; {fix}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or labels.dim() != 1:
        raise UnreadableFile(f"{what} {path} holds labels of {labels.dtype} {tuple(labels.shape)}, not one integer "
                             f"label per image; {fix}")
    return _checked_split(images.unsqueeze(1), labels, f"{what} {path}", fix)


def _described(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def read_mnist_family(name: str, split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST from its IDX files (Debian's Fashion-MNIST first, then torchvision's
    layout under ``root``) or a legacy processed file, each checked before use."""
    prefix, legacy = ("train", "training.pt") if split == "train" else ("t10k", "test.pt")
    title = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[name]
    folder = root / TORCHVISION_FOLDERS[name]
    candidates = ([(DEBIAN_FASHION_MNIST, "reinstall it (sudo apt-get install --reinstall dataset-fashion-mnist)")]
                  if name == "fashion-mnist" else []) + [(folder / "raw", REFETCH)]

    def found() -> tuple[torch.Tensor, torch.Tensor] | None:
        for raw, fix in candidates:
            split_data = _idx_split(raw, prefix, title, fix)
            if split_data is not None:
                return split_data
        if _present(folder / "processed" / legacy):
            return _legacy_split(folder / "processed" / legacy, f"legacy {title}", REFETCH)
        return None

    try:
        split_data = found()
    except (UnreadableFile, DatasetNotFound, ConfigError):
        if not download:
            raise
        split_data = None
    if split_data is None and download:
        _download(name, root)
        split_data = found()
    if split_data is not None:
        return split_data
    looked = ", ".join(str(raw) for raw, _ in candidates)
    if name == "fashion-mnist":
        raise DatasetNotFound(f"Fashion-MNIST not found (looked in {looked}); get it with "
                              f"'sudo apt-get install dataset-fashion-mnist' or rerun with --download")
    raise DatasetNotFound(f"{name} not found under {root} (looked for {prefix}-images-idx3-ubyte[.gz] in {looked}, "
                          f"torchvision's layout); rerun with --download (needs internet) or pass --data-root DIR "
                          "where it already is")


OUT_OF_BAND = ("BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER")


class _Refused(pickle.UnpicklingError):
    """A pickle that names a Python object outside what CIFAR's batches use."""


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3's pickles of bytes call it, and only as they call it."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode to {encoding!r}")
    return text.encode("latin1")


def _cifar_globals() -> dict[tuple[str, str], object]:
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    reconstruct = multiarray.multiarray._reconstruct
    return {("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's python batches (pickles of a dict holding a numpy array and lists) with only the
    few globals those use: a numpy array's rebuilders and Python 3's bytes. Any other global, the way
    a pickle runs code, is refused before it is looked up."""

    allowed = _cifar_globals()

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise _Refused(ascii(f"{module}.{name}")[:80])  # as the file spells it, on one line
        return found


def read_cifar_batch(path: Path, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 3, 32, 32) uint8 images and (N,) labels of one of CIFAR-10's python batches."""
    # CIFAR-10's python batches are what torchvision downloads and what a torchvision root holds, so they
    # are read as they are: through an unpickler that knows only the numpy globals they use (a pickle
    # runs code only through the globals it names). The binary version would need a download of its own.
    what = "CIFAR-10 batch"
    data = readers.read_bytes(path, what, fix, limit=MAX_DATASET_BYTES)
    try:
        # Walked once without building anything first: a length that runs past the end of the file or an
        # out-of-band buffer (which no CIFAR batch uses) is refused before the unpickler allocates for it.
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name in OUT_OF_BAND:
                raise ValueError(f"pickle protocol 5's {opcode.name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's about the pickled dtype's alignment flags
            batch = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as exc:
        raise UnreadableFile(f"{what} {path} holds Python objects other than CIFAR's arrays and lists ({exc}), "
                             f"refused unloaded because loading them could run code; {fix}") from None
    except MemoryError:
        raise UnreadableFile(f"{what} {path} asks for more memory than a CIFAR batch takes; {fix}") from None
    except Exception as exc:  # truncated or not a pickle: only the allowed globals ever ran
        raise UnreadableFile(f"{what} {path} is not a CIFAR-10 python batch (a truncated or corrupt pickle: "
                             f"{type(exc).__name__}); {fix}") from None
    if isinstance(batch, dict):
        batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    else:
        batch = {}
    images, labels = batch.get("data"), batch.get("labels")
    pixels = 3 * CIFAR_SIDE * CIFAR_SIDE
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2 and len(images)
            and images.shape[1] == pixels):
        raise UnreadableFile(f"{what} {path} holds no 'data' of uint8 images x {pixels} pixels; {fix}")
    if not (isinstance(labels, list) and all(type(label) is int and 0 <= label <= MAX_LABEL for label in labels)):
        raise UnreadableFile(f"{what} {path} holds no 'labels' list of class numbers 0 to {MAX_LABEL}; {fix}")
    if len(labels) != len(images):
        raise ConfigError(f"{what} {path} holds {len(images):,} images but {len(labels):,} labels, not one label per "
                          f"image; {fix}")
    return images.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), np.array(labels, dtype=np.int64)


def read_cifar10(split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from torchvision's layout, ROOT/cifar-10-batches-py/, each batch checked before use."""
    folder = root / CIFAR_FOLDER
    paths = [folder / name for name in CIFAR_BATCHES[split]]
    if download and not all(_present(path) for path in paths):
        _download("cifar10", root)
    missing = [path.name for path in paths if not _present(path)]
    if len(missing) == len(paths):
        raise DatasetNotFound(f"cifar10 not found under {root} (no {', '.join(missing)} in {folder}, torchvision's "
                              "layout); rerun with --download (needs internet) or pass --data-root DIR where it "
                              "already is")
    if missing:
        raise DatasetNotFound(f"CIFAR-10 in {folder} lacks {', '.join(missing)}; {REFETCH}")
    batches = [read_cifar_batch(path, REFETCH) for path in paths]
    images = torch.from_numpy(np.concatenate([images for images, _ in batches]))
    labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
    return _checked_split(images, labels, f"CIFAR-10 in {folder}", REFETCH)


def _download(name: str, root: Path) -> None:
    """Fetches ``name``'s files into torchvision's layout under ``root`` with torchvision's
    downloader (which checks each file's MD5); they are read with the readers above afterwards.
    No network, a server that refuses, a root that cannot be written: one line with the offline fix."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    if name == "cifar10":
        fetches = [([datasets.CIFAR10.url], root, datasets.CIFAR10.filename, datasets.CIFAR10.tgz_md5)]
        where = root / CIFAR_FOLDER
    else:
        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        where = root / TORCHVISION_FOLDERS[name] / "raw"
        fetches = [([f"{mirror}{filename}" for mirror in cls.mirrors], where, filename, md5)
                   for filename, md5 in cls.resources]
    for urls, folder, filename, md5 in fetches:
        for url in urls:
            try:
                download_and_extract_archive(url, download_root=str(folder), filename=filename, md5=md5)
                break
            except (OSError, RuntimeError, ValueError) as exc:  # URLError, a timeout, an MD5 mismatch, a full disk
                failure = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        else:
            raise DatasetNotFound(f"cannot download {name} from {urls[-1]} ({failure}); on a machine without "
                                  f"internet, copy its files into {where} (torchvision's layout) and pass "
                                  f"--data-root {root}")
