"""Where bytes from disk become tensors, images and text: the one module that opens files ganbench
did not just write itself.

Every file ganbench reads may come from a teammate's server or a damaged disk: checkpoints, the
real-feature cache, classifier weights, dataset files, image folders, MLflow artifacts. Each kind
has one reader (``checkpoint.load``, ``data.read_idx``, the Scorer's cache, ...) that checks what it
holds before use; all of them open the file through the functions here, which

- refuse what is not a regular file by its type, before opening it (a FIFO would block the
  command forever, a device or a file under /proc would be read without end);
- turn a missing, unreadable or oversized file into one line that names it and the fix;
- load tensors with ``torch.load(weights_only=True)``, which refuses any Python object other than
  tensors and plain containers instead of running its code;
- decode images only below a stated pixel count.

tests/test_readers.py checks that ``torch.load``, ``PIL.Image.open``, ``gzip.open`` and binary
``open`` appear nowhere else in bench/.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import stat
import warnings
import zlib
from pathlib import Path
from typing import Any

from bench.errors import ConfigError

ZIP_MAGIC = b"PK\x03\x04"
"""torch.save writes a zip archive."""
MAX_IMAGE_PIXELS = 16 * 1024 * 1024
"""The most pixels an image ganbench decodes may have (a 4096 x 4096 image); PIL's own limit
(89 megapixels, then a warning up to twice that) lets a 144-megapixel image take a minute."""
MAX_BYTES = 4 * 1024 ** 3
"""The most bytes a file read whole may hold (after decompression)."""


class UnreadableFile(ConfigError):
    """A file that is missing, not a regular file, not ours to read, or not what it should be."""


def regular_file(path: Path | str, what: str, fix: str) -> Path:
    """``path`` when it is a regular file on a disk that this process may read; else UnreadableFile
    naming ``what`` it should have been and the ``fix``. Nothing is opened: a FIFO is refused without
    blocking, a device or a file of /proc or /sys without reading it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows links: what a link points to is what would be read
        virtual = os.statvfs(path).f_blocks == 0
    except FileNotFoundError:
        raise UnreadableFile(f"{what} {path} does not exist; {fix}") from None
    except PermissionError:
        raise UnreadableFile(f"{what} {path} cannot be read (permission denied); give this user read access "
                             f"(chmod u+r), or {fix}") from None
    except OSError as exc:  # a name too long, a loop of links, an I/O error
        raise UnreadableFile(f"{what} {str(path)[:120]} cannot be read ({exc.strerror}); {fix}") from None
    if stat.S_ISDIR(mode):
        raise UnreadableFile(f"{what} {path} is a folder, not a file; {fix}")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise UnreadableFile(f"{what} {path} is {kind}, refused unopened; {fix}")
    if virtual:
        raise UnreadableFile(f"{what} {path} is on a virtual file system (/proc, /sys), not a file on a disk; {fix}")
    if not os.access(path, os.R_OK):
        raise UnreadableFile(f"{what} {path} cannot be read (permission denied); give this user read access "
                             f"(chmod u+r), or {fix}")
    return path


def read_bytes(path: Path | str, what: str, fix: str, *, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file, gunzipped when its name ends .gz; at most ``limit`` of them
    (a gzip bomb is refused, not inflated)."""
    path = regular_file(path, what, fix)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
            data = handle.read(limit + 1)
    except PermissionError:
        raise UnreadableFile(f"{what} {path} cannot be read (permission denied); {fix}") from None
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt gzip stream, an I/O error
        raise UnreadableFile(f"{what} {path} is truncated or corrupt ({type(exc).__name__}); {fix}") from None
    if len(data) > limit:
        raise UnreadableFile(f"{what} {path} holds over {limit:,} bytes, more than such a file can; {fix}")
    return data


def load_tensors(path: Path | str, what: str, fix: str, *, map_location: Any = "cpu") -> Any:
    """What ``torch.save`` wrote to a regular file, read with ``weights_only=True``: tensors and plain
    containers only (a file holding other Python objects is refused unread: loading them could run
    code). What it holds is the caller's to check."""
    import torch

    path = regular_file(path, what, fix)
    if path.stat().st_size == 0:
        raise UnreadableFile(f"{what} {path} is empty (an interrupted copy?); {fix}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        with path.open("rb") as handle:  # torch's zip archive, or a bare pickle (protocol 2 and later)
            start = handle.read(4)
        if start != ZIP_MAGIC and not start.startswith(b"\x80"):
            raise UnreadableFile(f"{what} {path} is not a file torch can read; {fix}") from None
        raise UnreadableFile(f"{what} {path} holds Python objects other than tensors, refused unread because "
                             f"loading them could run code; {fix}") from None
    except PermissionError:
        raise UnreadableFile(f"{what} {path} cannot be read (permission denied); {fix}") from None
    except Exception:  # whatever the reader raised on bytes it cannot parse: truncated, corrupt, not torch
        with path.open("rb") as handle:
            zipped = handle.read(4) == ZIP_MAGIC
        kind = "a truncated or corrupt torch file" if zipped else "not a file torch can read"
        raise UnreadableFile(f"{what} {path} is {kind}; {fix}") from None


def open_image(path: Path | str, what: str, fix: str, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """The image in a regular file, decoded (a ``PIL.Image.Image``), when it has at most
    ``max_pixels`` pixels: the size is read from the header before any pixel is decoded. Raises
    UnreadableFile for a file that is not an image, is truncated, or is larger."""
    path = regular_file(path, what, fix)
    return _decoded(path, f"{what} {path}", fix, max_pixels)


def image_from_bytes(data: bytes, what: str, fix: str, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """An image held in memory (an artifact downloaded into a buffer), checked as :func:`open_image` checks."""
    return _decoded(io.BytesIO(data), what, fix, max_pixels)


def _decoded(source: Path | io.BytesIO, named: str, fix: str, max_pixels: int):
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UnreadableFile(f"{named} is {width}x{height} pixels, over the {max_pixels:,} ganbench "
                                         f"decodes; {fix}")
                image.load()
                return image.copy()
    except UnreadableFile:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated, not an image
        raise UnreadableFile(f"{named} is not a readable image ({type(exc).__name__}); {fix}") from None


def kernel_text(path: Path | str) -> str | None:
    """A small text file the kernel provides (/proc, /sys: memory figures, limits), or None where this
    system has none. These are not regular files on a disk, so they do not go through regular_file."""
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read(1 << 16)
    except (OSError, ValueError):
        return None
