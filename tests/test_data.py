"""Datasets load from the real files; batches are in [-1, 1]; missing data says how to get it."""

import numpy as np
import pytest
import torch

from bench import data, torchvision_files
from bench.data import BatchSampler, load_dataset, to_unit_range
from bench.errors import ConfigError, DatasetNotFound
from tests.helpers import image_folder


def test_fashion_mnist_train_and_test_splits(fashion_train, fashion_test):
    assert fashion_train.images.shape == (60000, 1, 28, 28) and fashion_train.images.dtype == torch.uint8
    assert fashion_test.images.shape == (10000, 1, 28, 28)
    assert fashion_train.num_classes == 10
    assert torch.bincount(fashion_test.labels).tolist() == [1000] * 10  # the real test split is balanced


def test_digits_are_scikit_learns_real_8x8_images():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert train.image_shape == (1, 8, 8) and train.num_classes == 10
    assert train.images.max() == 255 and train.images.min() == 0
    from sklearn.datasets import load_digits

    # Read from scikit-learn's file, the same images and labels as its loader gives.
    digits = load_digits()
    assert torch.equal(test.images[:, 0], torch.from_numpy(np.rint(digits.images[::5] * (255 / 16)).astype(np.uint8)))
    assert test.labels.tolist() == digits.target[::5].tolist()
    assert train.labels.tolist() == np.delete(digits.target, np.s_[::5]).tolist()


def test_digits_come_from_scikit_learns_loader_where_its_file_moved(monkeypatch, tmp_path):
    read = data._digits("test")
    monkeypatch.setattr(data, "_digits_path", lambda: tmp_path / "digits.csv.gz")
    moved = data._digits("test")
    assert torch.equal(moved[0], read[0]) and torch.equal(moved[1], read[1])


def test_batches_are_in_minus_one_to_one(fashion_train):
    sampler = BatchSampler(fashion_train, torch.device("cpu"), seed=0)
    images, labels = sampler.next(512)
    assert images.dtype == torch.float32 and images.shape == (512, 1, 28, 28)
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert labels.shape == (512,)


def test_sampler_covers_an_epoch_without_repeats_then_reshuffles():
    dataset = load_dataset("digits", "test")
    sampler = BatchSampler(dataset, torch.device("cpu"), seed=0)
    order = sampler.order.clone()
    assert sorted(order.tolist()) == list(range(len(dataset)))  # a permutation: no image twice per pass
    batches = [sampler.next(60)[0] for _ in range(len(dataset) // 60)]
    assert torch.equal(torch.cat(batches), to_unit_range(dataset.images[order[:len(batches) * 60]]))
    sampler.next(60)  # what is left of the pass is too short: a new shuffled pass begins
    assert sampler.position == 60 and not torch.equal(order, sampler.order)


def test_sampler_state_restores_the_same_batches():
    dataset = load_dataset("digits", "train")
    sampler = BatchSampler(dataset, torch.device("cpu"), seed=3)
    for _ in range(30):
        sampler.next(64)
    state = sampler.state_dict()
    expected = [sampler.next(64)[1] for _ in range(30)]
    restored = BatchSampler(dataset, torch.device("cpu"), seed=99)
    restored.load_state_dict(state)
    assert all(torch.equal(a, restored.next(64)[1]) for a in expected)


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision_files, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFound) as error:
        load_dataset("fashion-mnist", root=tmp_path / "root")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "root") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message


def test_missing_torchvision_dataset_is_not_downloaded_unasked(tmp_path):
    with pytest.raises(DatasetNotFound, match="--download"):
        load_dataset("cifar10", root=tmp_path)
    assert not any(tmp_path.rglob("*.tar.gz"))


def test_an_image_folder_of_real_pngs_loads_by_class_flat_and_in_rgb(tmp_path, fashion_test):
    by_class = load_dataset(f"imagefolder:{image_folder(tmp_path / 'by_class', fashion_test, 60)}")
    assert by_class.images.shape == (60, 1, 28, 28) and by_class.num_classes == 10
    # Sorted by class folder, the order within a class kept: the same pixels (PNG is lossless) and labels.
    order = torch.argsort(fashion_test.labels[:60], stable=True)
    assert torch.equal(by_class.images, fashion_test.images[order]) and torch.equal(by_class.labels,
                                                                                   fashion_test.labels[order])
    flat = load_dataset(f"imagefolder:{image_folder(tmp_path / 'flat', fashion_test, 60, by_class=False)}")
    assert torch.equal(flat.images, fashion_test.images[:60]) and flat.num_classes == 1
    rgb = load_dataset(f"imagefolder:{image_folder(tmp_path / 'rgb', fashion_test, 60, rgb_side=32)}")
    assert rgb.images.shape == (60, 3, 32, 32) and torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_an_image_folder_skips_and_counts_the_files_that_do_not_decode(tmp_path, fashion_test):
    folder = image_folder(tmp_path / "images", fashion_test, 20, by_class=False)
    (folder / "truncated.png").write_bytes((folder / "00000.png").read_bytes()[:40])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "README").write_text("not an image file name: not counted")
    with pytest.warns(UserWarning, match="2 of 22 files .* are not readable images; skipped them"):
        dataset = load_dataset(f"imagefolder:{folder}")
    assert torch.equal(dataset.images, fashion_test.images[:20])


def test_image_size_resizes_mixed_and_oblong_images_to_one_square_side(tmp_path, fashion_test):
    from PIL import Image

    folder = image_folder(tmp_path / "mixed", fashion_test, 12, by_class=False)
    for index in range(6):  # half of them at twice the size
        path = folder / f"{index:05d}.png"
        Image.open(path).resize((56, 56), Image.Resampling.BICUBIC).save(path)
    with pytest.raises(ConfigError, match="differ in size .*pass --image-size N"):
        load_dataset(f"imagefolder:{folder}")
    resized = load_dataset(data.resized(f"imagefolder:{folder}", 28))
    assert resized.images.shape == (12, 1, 28, 28)
    # An untouched 28x28 image comes back as it was; one scaled up and back down, close to it (bicubic
    # blurs its edges a little), far closer than to its own transpose.
    assert torch.equal(resized.images[6:], fashion_test.images[6:12])
    original = fashion_test.images[:6].float()
    error = (resized.images[:6].float() - original).abs().mean()
    assert error < 10 and error < 0.3 * (resized.images[:6].float() - original.transpose(2, 3)).abs().mean()
    oblong = image_folder(tmp_path / "oblong", fashion_test, 2, by_class=False)
    for path in oblong.iterdir():
        Image.open(path).crop((0, 0, 28, 20)).save(path)
    with pytest.raises(ConfigError, match="are 28x20, not square; pass --image-size N"):
        load_dataset(f"imagefolder:{oblong}")
    assert load_dataset(f"imagefolder@16:{oblong}").images.shape == (2, 1, 16, 16)
    with pytest.raises(ConfigError, match="--image-size resizes image folders"):
        data.resized("fashion-mnist", 32)
    with pytest.raises(ConfigError, match="image size 4 is out of range"):
        load_dataset(f"imagefolder@4:{oblong}")


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of: fashion-mnist, digits"):
        load_dataset("celeba")


def test_a_subset_is_the_same_class_balanced_draw_every_time_and_its_test_split_is_whole():
    whole = load_dataset("digits")
    subset, again = load_dataset("digits[100]"), load_dataset("digits[100]")
    assert subset.name == "digits[100]" and len(subset) == 100 and subset.num_classes == 10
    assert torch.equal(subset.images, again.images) and torch.equal(subset.labels, again.labels)
    assert torch.bincount(subset.labels, minlength=10).tolist() == [10] * 10
    rows = {bytes(image.flatten().tolist()) for image in whole.images}
    assert all(bytes(image.flatten().tolist()) in rows for image in subset.images)  # the training split's own
    assert torch.equal(load_dataset("digits[100]", "test").images, load_dataset("digits", "test").images)
    from bench.classifier import weights_path
    assert weights_path("digits[100]") == weights_path("digits") is not None  # scored as the whole dataset


def test_a_subset_deals_classes_in_turn_so_a_small_class_gives_all_it_has():
    labels = torch.tensor([0] * 2 + [1] * 50 + [2] * 50)
    chosen = data.balanced_subset(labels, 30)
    assert torch.bincount(labels[chosen]).tolist() == [2, 14, 14]
    assert len(set(chosen.tolist())) == 30 and torch.equal(chosen, data.balanced_subset(labels, 30))
    assert not torch.equal(chosen, data.balanced_subset(labels, 30, seed=1))
    odd = data.balanced_subset(torch.arange(10) % 3, 4)  # classes of 4, 3, 3: one class gets the fourth
    assert sorted(torch.bincount(odd % 3, minlength=3).tolist()) == [1, 1, 2]


def test_a_subset_larger_than_the_data_or_of_a_subset_is_refused():
    with pytest.raises(ConfigError, match="subset 2000 is larger than the 1,437 training images of 'digits'"):
        load_dataset("digits[2000]")
    with pytest.raises(ConfigError, match="is a subset already"):
        data.with_subset("digits[10]", 5)
    assert data.with_subset("imagefolder@32:/data/my [photos]", 10) == "imagefolder@32:/data/my [photos][10]"
