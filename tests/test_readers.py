"""bench/readers.py is the one place where files become bytes, tensors and images: every other module
of bench/ reads through it, and it refuses special, unreadable, oversized and hostile files in one line."""

from __future__ import annotations

import ast
import gzip
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from bench import readers
from bench.readers import UnreadableFile
from tests.helpers import where_modes_bind

BENCH = Path(readers.__file__).parent
READING_CALLS = {"torch.load", "Image.open", "PIL.Image.open", "gzip.open", "np.load", "numpy.load", "pickle.load",
                 "pickle.loads", "json.load", "tomllib.load"}
"""Calls that read a file's contents, by the name they are called with."""
READING_METHODS = {"read_bytes", "read_text"}
WRITE_MODES = set("wax")


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def reads(call: ast.Call) -> bool:
    """Whether a call reads a file: a reading function, a Path's read_bytes/read_text, or open() in a reading
    mode (a method named open whose first argument is not a mode, such as TrackingStore.open(uri), is not a file's)."""
    name = dotted(call.func)
    if name in READING_CALLS:
        return True
    if isinstance(call.func, ast.Attribute) and call.func.attr in READING_METHODS:
        return not call.args  # Path.read_bytes() takes no path; readers.read_bytes(path, ...) is the reader
    if name != "open" and not (isinstance(call.func, ast.Attribute) and call.func.attr == "open"):
        return False
    given = call.args[1:2] if name == "open" else call.args[:1]
    mode = given[0] if given else next((k.value for k in call.keywords if k.arg == "mode"), ast.Constant("r"))
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
        return name == "open"  # open(path, mode_variable) may read; obj.open(value) is not Path.open
    return not WRITE_MODES & set(mode.value)


def test_every_file_read_in_bench_goes_through_the_readers():
    offenders = []
    for path in sorted(BENCH.rglob("*.py")):
        if path.name == "readers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and reads(node):
                offenders.append(f"{path.relative_to(BENCH.parent)}:{node.lineno} {ast.unparse(node.func)}")
    assert not offenders, "read these through bench/readers.py:\n" + "\n".join(offenders)


def test_the_read_path_test_sees_the_reads_it_forbids():
    """The AST rule above would pass on a module it cannot see into; here it sees each kind of read."""
    source = ("torch.load(p)\nImage.open(p)\ngzip.open(p, 'rb')\nopen(p)\nopen(p, 'rb')\npath.open('rb')\n"
              "path.read_bytes()\nopen(p, 'wb')\nreaders.read_bytes(p, w, f)\npath.open('a')\nTrackingStore.open(uri)\nself.folder.open(c, f)\n")
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    assert [reads(call) for call in calls] == [True] * 7 + [False] * 5


FIX = "pass another file"


@pytest.fixture
def special_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "to_proc").symlink_to("/proc/self/environ")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return tmp_path


@pytest.mark.parametrize("name, fragment", [
    ("fifo", "is a FIFO, refused unopened"), ("folder", "is a folder, not a file"),
    ("to_proc", "is on a virtual file system"), ("dangling", "does not exist"), ("absent", "does not exist")])
def test_a_special_or_missing_file_is_refused_by_type_before_it_is_opened(special_files, name, fragment):
    started = time.monotonic()
    for read in (lambda p: readers.read_bytes(p, "the thing", FIX), lambda p: readers.load_tensors(p, "the thing", FIX),
                 lambda p: readers.open_image(p, "the thing", FIX)):
        with pytest.raises(UnreadableFile, match=fragment) as refused:
            read(special_files / name)
        assert str(refused.value).startswith("the thing ") and str(refused.value).endswith(FIX)
        assert "\n" not in str(refused.value)
    assert time.monotonic() - started < 5  # a FIFO opened would block for ever


def test_a_name_too_long_and_a_device_are_one_line():
    with pytest.raises(UnreadableFile, match="File name too long"):
        readers.read_bytes("x" * 300, "the thing", FIX)
    with pytest.raises(UnreadableFile, match="is a device"):
        readers.read_bytes("/dev/zero", "the thing", FIX)  # a read would never end


@where_modes_bind
def test_a_file_without_read_permission_is_one_line(tmp_path):
    path = tmp_path / "secret.pt"
    torch.save({"a": torch.zeros(1)}, path)
    path.chmod(0)
    with pytest.raises(UnreadableFile, match="permission denied"):
        readers.load_tensors(path, "the thing", FIX)


def test_a_gzip_bomb_is_refused_not_inflated(tmp_path):
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(bytes(10_000_000)))  # 10 MB of zeros in about 10 kB
    assert path.stat().st_size < 20_000
    with pytest.raises(UnreadableFile, match="holds over 1,000,000 bytes"):
        readers.read_bytes(path, "the thing", FIX, limit=1_000_000)
    assert len(readers.read_bytes(path, "the thing", FIX, limit=10_000_000)) == 10_000_000
    path.write_bytes(gzip.compress(b"abc" * 1000)[:-20])  # truncated
    with pytest.raises(UnreadableFile, match="truncated or corrupt"):
        readers.read_bytes(path, "the thing", FIX)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo ran > /dev/null",))


def test_tensors_are_read_without_running_code(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"weights": torch.arange(3), "name": "g"}, path)
    assert torch.equal(readers.load_tensors(path, "the thing", FIX)["weights"], torch.arange(3))
    torch.save({"weights": RunsCode()}, path)
    with pytest.raises(UnreadableFile, match="holds Python objects other than tensors, refused unread"):
        readers.load_tensors(path, "the thing", FIX)
    path.write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(UnreadableFile, match="refused unread|not a file torch can read"):
        readers.load_tensors(path, "the thing", FIX)
    path.write_bytes(b"garbage\n")  # neither an archive nor a pickle: not blamed on Python objects
    with pytest.raises(UnreadableFile, match="is not a file torch can read"):
        readers.load_tensors(path, "the thing", FIX)
    path.write_bytes(b"")
    with pytest.raises(UnreadableFile, match="is empty"):
        readers.load_tensors(path, "the thing", FIX)


def digit_image(side: int) -> Image.Image:
    """A real 8x8 digit from scikit-learn, scaled to side x side."""
    digit = np.rint(load_digits().images[0] * (255 / 16)).astype(np.uint8)
    return Image.fromarray(digit, "L").resize((side, side), Image.Resampling.NEAREST)


def test_an_image_is_decoded_only_below_the_pixel_limit(tmp_path):
    path = tmp_path / "digit.png"
    digit_image(64).save(path)
    image = readers.open_image(path, "the image", FIX, max_pixels=64 * 64)
    assert image.size == (64, 64) and np.array_equal(np.asarray(image), np.asarray(digit_image(64)))
    with pytest.raises(UnreadableFile, match="is 64x64 pixels, over the 4,095"):
        readers.open_image(path, "the image", FIX, max_pixels=64 * 64 - 1)
    huge = tmp_path / "huge.png"
    Image.new("1", (12_000, 12_000)).save(huge)  # 144 megapixels in a few kB
    started = time.monotonic()
    with pytest.raises(UnreadableFile, match="12000x12000 pixels"):
        readers.image_from_bytes(huge.read_bytes(), "the artifact", FIX)
    assert time.monotonic() - started < 2, "the size is read from the header, not by decoding"
    path.write_bytes(path.read_bytes()[:60])  # a truncated PNG
    with pytest.raises(UnreadableFile, match="not a readable image"):
        readers.open_image(path, "the image", FIX)


BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@BOUNDED
@given(data=st.binary(max_size=2048), gzipped=st.booleans())
def test_any_bytes_are_read_back_or_refused_in_one_line(tmp_path, data, gzipped):
    path = tmp_path / ("blob.gz" if gzipped else "blob")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    assert readers.read_bytes(path, "the blob", FIX) == data
    for read in (readers.load_tensors, readers.open_image):
        try:
            read(path, "the blob", FIX)
        except UnreadableFile as exc:
            assert "\n" not in str(exc) and str(exc).endswith(FIX)
