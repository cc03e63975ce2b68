"""Dataset files from elsewhere: a torchvision-layout root (MNIST's IDX files, a legacy processed
file, CIFAR-10's python batches) and image folders are read by ganbench's own checked readers.
Every hostile or damaged root, built here from real images (Debian's Fashion-MNIST, scikit-learn's
digits), ends in one error line that names the file; valid ones load as torchvision would.
Property-based tests (hypothesis) feed the IDX reader random headers and bytes."""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import torchvision_files
from bench.cli import main
from bench.data import load_dataset
from bench.torchvision_files import DEBIAN_FASHION_MNIST, read_idx
from bench.errors import BenchError, ConfigError, DatasetNotFound
from bench.readers import UnreadableFile
from tests.helpers import image_folder, mnist_root, where_modes_bind



@functools.cache
def fashion_mnist(kind: str) -> np.ndarray:
    ndim = 3 if kind == "images" else 1
    return read_idx(DEBIAN_FASHION_MNIST / f"train-{kind}-idx{ndim}-ubyte.gz", ndim, "Fashion-MNIST", "")


def real(kind: str, count: int) -> np.ndarray:
    """The first ``count`` images (count x 28 x 28) or labels of Debian's Fashion-MNIST training split."""
    return fashion_mnist(kind)[:count].copy()


def idx(array: np.ndarray, type_code: int = 0x08, ndim: int | None = None) -> bytes:
    """``array`` as an IDX file: magic (two zero bytes, the type, the number of dimensions), the
    dimensions as big-endian 32-bit counts, then the values (big-endian for wider types, as IDX has it)."""
    ndim = array.ndim if ndim is None else ndim
    shape = list(array.shape) + [1] * (ndim - array.ndim)
    values = array.astype(array.dtype.newbyteorder(">")).tobytes()
    return bytes([0, 0, type_code, ndim]) + b"".join(n.to_bytes(4, "big") for n in shape) + values


def train(root: Path, out: Path, *extra: str, dataset: str = "mnist"):
    """`bench train` on ``dataset`` under ``root``, for 3 steps on the CPU."""
    return CliRunner().invoke(main, ["train", "--variant", "gan", "--dataset", dataset, "--data-root", str(root),
                                     "--steps", "3", "--device", "cpu", "--out", str(out), *extra])


def assert_one_error_line(result, *fragments: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


class RunsCode:
    """Unpickling this runs `touch MARKER`: what a crafted dataset file does to an unrestricted unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- MNIST's IDX files in torchvision's layout -------------------------------------------------------

def hostile_mnist_roots(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (an MNIST root whose training images or labels are hostile, what the one line must say)."""
    images, labels = real("images", 100), real("labels", 100)
    whole = idx(images)
    environ = "/proc/self/environ"
    cases: dict[str, tuple[object, bytes | str | None, str]] = {
        # name: (which file, its content (bytes; a str is a link target; None: a FIFO), the refusal)
        "tiny images": ("images", idx(images[:, :2, :2]), "holds images of 2x2 pixels"),
        "a cut header": ("images", whole[:10], "is truncated: 10 bytes, shorter than its 16-byte header"),
        "3 bytes": ("images", whole[:3], "is not an IDX file"),
        "8 dimensions": ("images", idx(images, ndim=8), "has 8 dimensions, not 3"),
        "float images": ("images", idx(images.astype(np.float32) / 255, 0x0D), "holds 32-bit floats, not the"),
        "int32 labels": ("labels", idx(labels.astype(np.int32), 0x0C), "holds 32-bit integers"),
        "a text file": ("images", b"P2\n28 28\n255\n" + b"0 " * 784, "is not an IDX file"),
        "a link to /proc/self/environ": ("images", environ, "is on a virtual file system"),
        "a FIFO": ("images", None, "is a FIFO, refused unopened"),
        "empty images": ("images", b"", "is empty"),
        "1-d images": ("images", idx(labels), "has 1 dimension, not 3"),
        "3-d labels": ("labels", idx(images), "has 3 dimensions, not 1"),
        "truncated images": ("images", whole[: len(whole) // 2],
                             "is truncated: its header announces 100 x 28 x 28 = 78,400 bytes, the file holds 39,192"),
        "trailing bytes": ("images", whole + b"\0" * 28, "holds 28 bytes more than the 100 x 28 x 28"),
        "no images": ("images", idx(images[:0]), "holds nothing"),
        "7 labels": ("labels", idx(labels[:7]), "holds 100 images but 7 labels"),
        "no labels file": ("labels", "MISSING", "has no labels file (train-labels-idx1-ubyte[.gz])"),
        "oblong images": ("images", idx(images[:, :20, :]), "holds images of 20x28 pixels"),
        "truncated gzip": ("images.gz", gzip.compress(whole)[:2000], "is truncated or corrupt"),
    }
    roots = {}
    for name, (which, content, message) in cases.items():
        root = folder / name.replace(" ", "_").replace("/", "_")
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte").write_bytes(whole)
        (raw / "train-labels-idx1-ubyte").write_bytes(idx(labels))
        kind = which.split(".")[0]
        path = raw / f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        path.unlink()
        if which.endswith(".gz"):
            path = path.with_name(path.name + ".gz")
        if content is None:
            os.mkfifo(path)
        elif content == "MISSING":
            pass
        elif isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)
        roots[name] = (root, message)
    return roots


def test_every_hostile_mnist_root_is_one_error_line_naming_the_file(tmp_path):
    for name, (root, message) in hostile_mnist_roots(tmp_path).items():
        line = assert_one_error_line(train(root, tmp_path / "run"), message)
        assert str(root / "MNIST" / "raw") in line, (name, line)


def test_a_valid_mnist_root_loads_gzipped_or_not_as_it_was_written(tmp_path):
    root = mnist_root(tmp_path / "plain", train=300, test=50)
    dataset = load_dataset("mnist", root=root)
    assert dataset.images.shape == (300, 1, 28, 28) and dataset.images.dtype == torch.uint8
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(real("images", 300)))
    assert torch.equal(dataset.labels, torch.from_numpy(real("labels", 300).astype(np.int64)))
    assert dataset.num_classes == 10 and len(load_dataset("mnist", "test", root=root)) == 50
    raw = root / "MNIST" / "raw"
    for path in list(raw.iterdir()):  # as torchvision downloads them: gzipped
        (raw / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert torch.equal(load_dataset("mnist", root=root).images, dataset.images)


def test_a_truncated_idx_file_is_reported_as_truncated_not_as_missing(tmp_path):
    root = mnist_root(tmp_path / "data", train=200, test=10)
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(UnreadableFile, match="is truncated: its header announces 10 x 28 x 28 = 7,840 bytes, the "
                                              "file holds 7,740"):
        load_dataset("mnist", "test", root=root)


def legacy_root(folder: Path, content) -> Path:
    """An MNIST root as torchvision before 0.8 left it: MNIST/processed/training.pt, written by torch.save."""
    processed = folder / "MNIST" / "processed"
    processed.mkdir(parents=True)
    torch.save(content, processed / "training.pt")
    return folder


def test_a_legacy_processed_file_of_real_tensors_loads(tmp_path):
    images, labels = torch.from_numpy(real("images", 100)), torch.from_numpy(real("labels", 100).astype(np.int64))
    dataset = load_dataset("mnist", root=legacy_root(tmp_path, (images, labels)))
    assert torch.equal(dataset.images[:, 0], images) and torch.equal(dataset.labels, labels)


def test_a_legacy_processed_file_holding_code_or_junk_is_one_line_and_runs_nothing(tmp_path):
    images, labels = torch.from_numpy(real("images", 100)), torch.from_numpy(real("labels", 100).astype(np.int64))
    marker = tmp_path / "PWNED"
    cases = {
        "code": ((images, RunsCode(marker)), "could run code"),
        "a dict": ({"images": images, "labels": labels}, "holds a dict, not the (images, labels) tensors"),
        "three tensors": ((images, labels, labels), "holds a tuple of 3, not the (images, labels)"),
        "float images": ((images.float() / 255, labels), "holds images of torch.float32 (100, 28, 28)"),
        "2-d labels": ((images, labels[:, None]), "holds labels of torch.int64 (100, 1)"),
        "7 labels": ((images, labels[:7]), "holds 100 images but 7 labels"),
        "negative labels": ((images, labels - 5), "holds labels from -5 to 4"),
        "a huge label": ((images, labels * 10**12), "holds labels from 0 to 9000000000000"),
        "tiny images": ((images[:, :4, :4], labels), "holds images of 4x4 pixels"),
        "a string": ("MNIST", "holds a str"),
    }
    for name, (content, message) in cases.items():
        root = legacy_root(tmp_path / name.replace(" ", "_"), content)
        line = assert_one_error_line(train(root, tmp_path / "run"), message)
        assert str(root / "MNIST" / "processed" / "training.pt") in line, (name, line)
    assert not marker.exists(), "a legacy file's pickled code ran"


def test_download_without_network_is_one_line_naming_the_url_and_the_offline_fix(tmp_path, monkeypatch):
    # urllib builds its default opener, proxies included, at its first use and keeps it: the one built here
    # (through the refusing proxy below) goes with the test, or every later urlopen in the process is refused.
    monkeypatch.setattr(urllib.request, "_opener", None)
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # the discard port: every connection is refused
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    for dataset, url in (("mnist", "mnist/train-images-idx3-ubyte.gz"), ("cifar10", "cifar-10-python.tar.gz")):
        result = train(tmp_path / "offline", tmp_path / "run", "--download", dataset=dataset)
        assert_one_error_line(result, f"cannot download {dataset} from http", url, "without internet",
                              f"--data-root {tmp_path / 'offline'}")


def test_a_missing_torchvision_root_is_not_found_with_how_to_get_it(tmp_path):
    for dataset in ("mnist", "cifar10"):
        with pytest.raises(DatasetNotFound, match="not found under .*--download .*--data-root"):
            load_dataset(dataset, root=tmp_path)
    assert not any(tmp_path.rglob("*"))


# -- CIFAR-10's python batches ---------------------------------------------------------------------

def cifar_batch(images: np.ndarray, labels: list, **extra) -> bytes:
    """A CIFAR-10 python batch as torchvision's download holds it: a pickled dict of 'data' (N x 3072
    uint8, the channels one after another) and 'labels'."""
    return pickle.dumps({"batch_label": "training batch 1 of 5", "labels": labels, "data": images,
                         "filenames": [f"{n}.png" for n in range(len(labels))], **extra}, protocol=2)


def real_rgb(count: int) -> tuple[np.ndarray, list[int]]:
    """Real Fashion-MNIST images padded to 32 x 32 and repeated into three channels, as CIFAR's rows."""
    images = np.pad(real("images", count), ((0, 0), (2, 2), (2, 2)))
    return np.repeat(images[:, None], 3, axis=1).reshape(count, 3072), real("labels", count).tolist()


def cifar_root(folder: Path, per_batch: int = 20, **replace: bytes) -> Path:
    batches = folder / torchvision_files.CIFAR_FOLDER
    batches.mkdir(parents=True)
    images, labels = real_rgb(per_batch)
    for name in (*torchvision_files.CIFAR_BATCHES["train"], *torchvision_files.CIFAR_BATCHES["test"]):
        (batches / name).write_bytes(replace.get(name, cifar_batch(images, labels)))
    return folder


def test_a_cifar10_root_loads_through_the_restricted_unpickler(tmp_path):
    dataset = load_dataset("cifar10", root=cifar_root(tmp_path))
    images, labels = real_rgb(20)
    assert dataset.images.shape == (100, 3, 32, 32) and dataset.num_classes == 10
    assert torch.equal(dataset.images[:20, 1, 2:30, 2:30], torch.from_numpy(real("images", 20)))
    assert dataset.labels.tolist() == labels * 5 and len(load_dataset("cifar10", "test", root=tmp_path)) == 20


def test_a_hostile_cifar10_batch_is_one_line_and_runs_nothing(tmp_path):
    images, labels = real_rgb(20)
    marker = tmp_path / "PWNED"
    whole = cifar_batch(images, labels)
    cases = {
        "code": (pickle.dumps({"data": images, "labels": RunsCode(marker)}, protocol=2), "posix.system"),
        "code, protocol 0": (pickle.dumps(RunsCode(marker), protocol=0), "could run code"),
        "a global named over two lines": (b"\x80\x04\x8c\x04os\nx\x8c\x06system\x93.", "('os\\nx.system')"),
        "a torch tensor": (pickle.dumps({"data": torch.zeros(3), "labels": labels}), "could run code"),
        "truncated": (whole[: len(whole) // 2], "a truncated or corrupt pickle"),
        "empty": (b"", "a truncated or corrupt pickle"),
        "float data": (cifar_batch(images.astype(np.float32), labels), "holds no 'data' of uint8 images x 3072"),
        "grayscale rows": (cifar_batch(images[:, :1024], labels), "holds no 'data' of uint8 images x 3072"),
        "string labels": (cifar_batch(images, [str(label) for label in labels]), "holds no 'labels' list"),
        "7 labels": (cifar_batch(images, labels[:7]), "holds 20 images but 7 labels"),
        "a list": (pickle.dumps([1, 2, 3]), "holds no 'data'"),
    }
    for name, (content, message) in cases.items():
        root = cifar_root(tmp_path / name.replace(" ", "_").replace(",", ""), data_batch_3=content)
        line = assert_one_error_line(train(root, tmp_path / "run", dataset="cifar10"), message)
        assert str(root / torchvision_files.CIFAR_FOLDER / "data_batch_3") in line, (name, line)
    assert not marker.exists(), "a CIFAR batch's pickled code ran"


def test_a_cifar10_root_missing_a_batch_says_which(tmp_path):
    root = cifar_root(tmp_path)
    (root / torchvision_files.CIFAR_FOLDER / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFound, match="lacks data_batch_4"):
        load_dataset("cifar10", root=root)


# -- unreadable files ------------------------------------------------------------------------------

@where_modes_bind
def test_an_unreadable_class_folder_image_or_test_split_is_one_line_naming_it(tmp_path, fashion_test):
    folder = image_folder(tmp_path / "images", fashion_test, 40)
    denied = sorted(folder.iterdir())[2]
    denied.chmod(0)
    try:
        assert_one_error_line(train(tmp_path, tmp_path / "run", dataset=f"imagefolder:{folder}"),
                              f"image folder {denied} cannot be read (permission denied)", "chmod -R u+rX")
    finally:
        denied.chmod(0o755)
    image = sorted(denied.iterdir())[0]
    image.chmod(0)
    assert_one_error_line(train(tmp_path, tmp_path / "run", dataset=f"imagefolder:{folder}"),
                          f"image {image} cannot be read (permission denied)", "chmod")
    image.chmod(0o644)

    split = tmp_path / "split"
    image_folder(split / "train", fashion_test, 40)
    image_folder(split / "test", fashion_test, 20)
    (split / "test").chmod(0)
    try:
        result = CliRunner().invoke(main, ["features", "train", "--dataset", f"imagefolder:{split}", "--epochs", "1",
                                           "--device", "cpu"])
        assert_one_error_line(result, f"{split / 'test'} cannot be read (permission denied)", "chmod")
    finally:
        (split / "test").chmod(0o755)


@where_modes_bind
def test_an_unreadable_idx_file_is_one_line_naming_it(tmp_path):
    root = mnist_root(tmp_path / "data", train=100, test=10)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.chmod(0)
    with pytest.raises(UnreadableFile, match=f"{labels} cannot be read \\(permission denied\\).*chmod u\\+r"):
        load_dataset("mnist", "test", root=root)


# -- property-based: random IDX files ---------------------------------------------------------------

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIMENSIONS = st.one_of(st.integers(0, 40), st.sampled_from([28, 2**31, 2**32 - 1]))


@st.composite
def idx_files(draw) -> bytes:
    """An IDX file's bytes: a header whose every field may be wrong, then a body of about the bytes it announces."""
    magic = draw(st.sampled_from([b"\0\0", b"\0\1", b"\x1f\x8b", b"PK"]))
    type_code = draw(st.sampled_from([0x08, 0x08, 0x09, 0x0B, 0x0D, 0xFF]))
    ndim = draw(st.sampled_from([1, 3, 3, 0, 2, 8, 255]))
    shape = draw(st.lists(DIMENSIONS, min_size=min(ndim, 4), max_size=min(ndim, 4)))
    announced = int(np.prod(shape, dtype=object)) if shape else 0
    lengths = [st.integers(0, 3000)] + ([st.just(announced)] if announced <= 100_000 else [])
    length = draw(st.one_of(*lengths))
    body = draw(st.binary(min_size=min(length, 64), max_size=min(length, 64))) * (length // 64 + 1)
    header = magic + bytes([type_code, ndim]) + b"".join(n.to_bytes(4, "big") for n in shape)
    cut = draw(st.one_of(st.none(), st.integers(0, len(header))))
    return (header + body[:length])[:cut] if cut is not None else header + body[:length]


@BOUNDED
@given(idx_files(), st.sampled_from([1, 3]), st.booleans())
def test_an_idx_file_is_parsed_or_refused_with_one_line(content, ndim, gzipped):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("file.gz" if gzipped else "file")
        path.write_bytes(gzip.compress(content) if gzipped else content)
        try:
            array = read_idx(path, ndim, "IDX file", "fix it")
        except UnreadableFile as exc:
            assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
            return
    assert array.dtype == np.uint8 and array.ndim == ndim and array.size == len(content) - 4 - 4 * ndim


@BOUNDED
@given(idx_files(), idx_files())
def test_an_mnist_root_of_random_idx_files_loads_or_is_refused_with_one_line(images, labels):
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte").write_bytes(images)
        (raw / "train-labels-idx1-ubyte").write_bytes(labels)
        try:
            dataset = load_dataset("mnist", root=folder)
        except (UnreadableFile, ConfigError) as exc:
            assert folder in str(exc) and "\n" not in str(exc), str(exc)
            return
    assert len(dataset.labels) == len(dataset.images) and dataset.images.shape[2] == dataset.images.shape[3]


@BOUNDED
@given(st.binary(max_size=400), st.integers(0, 2000), st.integers(0, 255))
def test_a_damaged_cifar_batch_is_read_or_refused_with_one_line(noise, at, value):
    """Random bytes, and real batches with one byte changed: only the allowed globals can run."""
    images, labels = real_rgb(2)
    whole = bytearray(cifar_batch(images, labels))
    whole[at % len(whole)] = value
    for content in (noise, bytes(whole)):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "data_batch_1"
            path.write_bytes(content)
            try:
                torchvision_files.read_cifar_batch(path, "fix it")
            except BenchError as exc:
                assert str(path) in str(exc) and "\n" not in str(exc), str(exc)


# -- image folders as users' folders come: other bit depths, stray folders, no test split ----------

def test_sixteen_bit_images_are_rescaled_and_32_bit_or_float_ones_refused(tmp_path, fashion_test):
    """A 16-bit PNG read as 8 bits must be rescaled (65,535 is white), not clipped at 255, which made
    nearly every pixel white and was then scored; 32-bit integer and float pixels carry no range."""
    from PIL import Image

    from bench.data import load_image_folder

    eight = fashion_test.images[:12, 0].numpy()
    for index, image in enumerate(eight):
        Image.fromarray(image.astype(np.uint16) * 257).save((tmp_path / "wide").mkdir(exist_ok=True) or
                                                            tmp_path / "wide" / f"{index:02d}.png")
    assert Image.open(tmp_path / "wide" / "00.png").mode == "I;16"
    assert torch.equal(load_image_folder(tmp_path / "wide").images[:, 0], torch.from_numpy(eight))

    for name, pixels, mode in (("float", eight.astype(np.float32) / 255, "mode F"),
                               ("int32", eight.astype(np.int32) * 65536, "mode I")):
        (tmp_path / name).mkdir()
        for index, image in enumerate(pixels):
            Image.fromarray(image).save(tmp_path / name / f"{index:02d}.tif")
        result = CliRunner().invoke(main, ["eval", "--images", str(tmp_path / name), "--dataset", "fashion-mnist"])
        assert_one_error_line(result, f"{tmp_path / name / '00.tif'} has", mode, "save the images with 8 or 16 bits")


def test_an_image_folder_is_read_whole_or_refused_never_in_part(tmp_path, fashion_test):
    from bench.data import load_image_folder

    classes = image_folder(tmp_path / "classes", fashion_test, 30)
    clean = load_image_folder(classes)
    # What archivers and notebooks leave beside the classes is not a class.
    image_folder(classes / ".ipynb_checkpoints", fashion_test, 4, by_class=False)
    image_folder(classes / "__MACOSX" / "0-t-shirt", fashion_test, 4, by_class=False)
    (classes / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    stray = load_image_folder(classes)
    assert (stray.num_classes, stray.labels.tolist()) == (clean.num_classes, clean.labels.tolist())
    assert torch.equal(stray.images, clean.images)

    # Images beside sub-folders: read as classes, the images would be left out unsaid.
    mixed = image_folder(tmp_path / "mixed", fashion_test, 12, by_class=False)
    image_folder(mixed / "thumbs", fashion_test, 2, by_class=False)
    result = CliRunner().invoke(main, ["eval", "--images", str(mixed), "--dataset", "fashion-mnist"])
    assert_one_error_line(result, f"{mixed} holds both images (00000.png, 00001.png, ...) and sub-folders (thumbs)")

    # A class folder without images would be a class with none.
    (classes / "9-ankle-boot-empty").mkdir()
    (classes / "9-ankle-boot-empty" / "notes.txt").write_text("to do")
    result = CliRunner().invoke(main, ["train", "--variant", "gan", "--dataset", f"imagefolder:{classes}",
                                       "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert_one_error_line(result, f"the class folder {classes / '9-ankle-boot-empty'} holds no images")


def test_an_image_folder_with_only_a_train_folder_is_scored_against_it(tmp_path, fashion_test):
    """PATH/train/<class>/ and no PATH/test: the test split is the training images, as for a folder
    without splits, not PATH read as one class named 'train' (which held no images itself)."""
    root = tmp_path / "only-train"
    image_folder(root / "train", fashion_test, 30)
    train, test = (load_dataset(f"imagefolder:{root}", split) for split in ("train", "test"))
    assert torch.equal(train.images, test.images) and train.num_classes == test.num_classes == 10

    # A split folder beside other folders or images (a class folder named 'train'?), or test/ alone: refused.
    image_folder(root / "extra", fashion_test, 2, by_class=False)
    result = CliRunner().invoke(main, ["eval", "--images", str(root), "--dataset", "fashion-mnist"])
    assert_one_error_line(result, f"{root} holds train/ beside other images or folders (extra)")
    (root / "train").rename(root / "test")
    (root / "extra").rename(tmp_path / "elsewhere")
    result = CliRunner().invoke(main, ["eval", "--images", str(root), "--dataset", "fashion-mnist"])
    assert_one_error_line(result, f"{root} holds test/ but no train/; put the training images in {root / 'train'}")


def test_too_few_images_to_score_is_one_line_before_any_work(tmp_path, fashion_test):
    """Precision, recall, density and coverage need each image's 5th nearest neighbour: fewer than 6
    images on either side crashed in kthvalue after the run had trained."""
    few = image_folder(tmp_path / "few", fashion_test, 5, by_class=False)
    result = CliRunner().invoke(main, ["eval", "--images", str(few), "--dataset", "fashion-mnist"])
    assert_one_error_line(result, f"the images in {few} number 5: scoring needs at least 6")

    root = tmp_path / "small-test"
    image_folder(root / "train", fashion_test, 40)
    image_folder(root / "test", fashion_test, 4)
    result = CliRunner().invoke(main, ["train", "--variant", "gan", "--dataset", f"imagefolder:{root}",
                                       "--steps", "400", "--eval-every", "200", "--batch-size", "8", "--device", "cpu",
                                       "--features", "inception", "--out", str(tmp_path / "run")])
    assert_one_error_line(result, f"the test split of 'imagefolder:{root}', which samples are scored against, "
                                  "holds 4: scoring needs at least 6", "PATH/test, else PATH/train")
    assert not (tmp_path / "run").exists()  # refused before training, not at the first evaluation

    one = image_folder(tmp_path / "one", fashion_test, 1, by_class=False)
    result = CliRunner().invoke(main, ["train", "--variant", "gan", "--dataset", f"imagefolder:{one}", "--steps", "1",
                                       "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "run1")])
    assert_one_error_line(result, "larger than the dataset (1 images); a batch needs 2 images or more: add images")
