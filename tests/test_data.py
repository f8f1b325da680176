"""htaf.data: the built-in sets, the validation split, ImageFolder dirs and zips, torchvision
names (offline, and from the shared raw files), and the device-side batches (normalization,
crop/flip augmentation, DDP sharding)."""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from htaf import data as hdata
from htaf.data import DatasetUnavailableError, ImageDataset, load_dataset, stratified_split
from shared_datasets import require


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_dtypes_and_split(digits):
    assert (digits.name, digits.in_channels, digits.image_size) == ("digits", 1, 8)
    assert digits.num_classes == 10 and digits.splits == ("train", "val", "test")
    assert digits.test_x.shape == (360, 1, 8, 8)
    assert digits.train_x.shape[0] + digits.val_x.shape[0] == 1437     # val carved from train
    assert digits.val_x.shape[0] == 144           # ⌈10 %⌉, each class its share
    assert digits.train_x.dtype == torch.uint8 and digits.train_y.dtype == torch.int64
    assert int(digits.train_x.max()) == 255 and int(digits.train_x.min()) == 0
    # stratified: every class in the test and validation splits with its share (±1)
    counts = torch.bincount(digits.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    val = torch.bincount(digits.val_y, minlength=10)
    assert val.min() >= 14 and val.max() <= 15
    # mean/std are the training split's (without validation), in [0, 1] units
    x = digits.train_x.double() / 255
    assert digits.mean[0] == pytest.approx(x.mean().item(), rel=1e-9)
    assert digits.std[0] == pytest.approx(x.std(unbiased=False).item(), rel=1e-9)
    assert digits.hflip is False   # digits are not flip-invariant
    assert digits.model_kwargs() == {"in_channels": 1, "image_size": 8, "num_classes": 10}
    assert "1,293 train / 144 val / 360 test" == digits.sizes()


def test_digits_are_scikit_learns_without_importing_it():
    """Read from scikit-learn's own CSV (importing sklearn costs seconds per process)."""
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", val_fraction=None)
    ref = torch.from_numpy(load_digits().data * 255 / 16).round().to(torch.uint8)
    mine = torch.cat([ds.train_x, ds.test_x]).flatten(1)
    assert sorted(map(tuple, mine.tolist())) == sorted(map(tuple, ref.tolist()))


def test_validation_is_carved_from_train_disjoint_and_seeded(digits):
    whole = load_dataset("digits", val_fraction=None)
    assert whole.splits == ("train", "test") and whole.val_x is None
    # train + val are exactly the former training split, without overlap
    flat = whole.train_x.flatten(1)
    both = torch.cat([digits.train_x, digits.val_x]).flatten(1)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(both) == key(flat)
    keep, held = stratified_split(whole.train_y, 0.1, seed=0)
    assert torch.equal(digits.val_y, whole.train_y[held]) and len(set(keep.tolist()) & set(
        held.tolist())) == 0
    again = load_dataset("digits")
    assert torch.equal(again.val_x, digits.val_x)                    # same on every call
    other = whole.with_validation(0.1, seed=1)
    assert not torch.equal(other.val_x, digits.val_x)                # the seed draws it
    assert digits.with_validation(0.5) is digits                     # a split it has wins


def test_stratified_split_keeps_every_class():
    y = torch.tensor([0] * 10 + [1] * 3 + [2])
    keep, held = stratified_split(y, 0.5, seed=0)
    assert torch.bincount(y[held], minlength=3).tolist() == [5, 2, 0]   # round(1.5)=2, n-1 cap
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(len(y)))
    with pytest.raises(ValueError, match="val_fraction"):
        _toy().with_validation(1.0)


def test_digits_deterministic(digits):
    again = load_dataset("digits")
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)


def test_mnist5k():
    ds = load_dataset("mnist5k")
    assert ds.train_x.shape == (3600, 1, 28, 28) and ds.val_x.shape == (400, 1, 28, 28)
    assert ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.test_y.dtype == torch.int64
    assert torch.bincount(ds.test_y).tolist() == [100] * 10
    again = load_dataset("MNIST5K")
    assert torch.equal(again.test_x, ds.test_x)


# ------------------------------------------------------------------------- ImageFolder zips / dirs

def _png(rgb, size=(6, 5), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def _files(prefix=""):
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for c, cls in enumerate(("cat", "ant")):          # sorted: ant=0, cat=1
            for i in range(n):
                files[f"{prefix}{split}/{cls}/{i}.png"] = _png((10 * i + 100 * c, 5, 200))
    return files


def _write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in files.items():
            z.writestr(name, blob)
    return path


def test_image_folder_zip_and_cache(tmp_path):
    z = _write_zip(tmp_path / "toy.zip", _files(prefix="toy/"))     # one top-level folder is fine
    cache = tmp_path / "cache"
    ds = load_dataset(z, cache_dir=cache, val_fraction=None)
    assert ds.name == "toy" and ds.classes == ["ant", "cat"]
    assert ds.train_x.shape == (6, 3, 5, 6) and ds.test_x.shape == (4, 3, 5, 6)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    # pixel values survive: ant (label 0) image 0 has red 100, cat (label 1) image 2 has red 20
    assert ds.train_x[0, :, 0, 0].tolist() == [100, 5, 200]
    assert ds.train_x[5, :, 0, 0].tolist() == [20, 5, 200]
    cached = list(cache.glob("toy-*.pt"))
    assert len(cached) == 1 and not list(cache.glob("*.tmp*"))
    again = load_dataset(z, cache_dir=cache, val_fraction=None)      # from the cache
    assert torch.equal(again.train_x, ds.train_x) and again.mean == ds.mean
    assert ds.hflip is True


def test_image_folder_directory(tmp_path):
    root = tmp_path / "folder"
    for name, blob in _files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    ds = load_dataset(root, cache_dir=tmp_path / "cache", val_fraction=None)
    assert ds.train_x.shape == (6, 3, 5, 6) and ds.classes == ["ant", "cat"]


def test_image_folder_val_split_wins(tmp_path):
    files = _files()
    for c, cls in enumerate(("cat", "ant")):
        files[f"val/{cls}/0.png"] = _png((7, 7, 7 + c))
    ds = load_dataset(_write_zip(tmp_path / "tvt.zip", files), cache_dir=tmp_path / "cache",
                      val_fraction=0.5)
    assert ds.train_x.shape[0] == 6 and ds.val_x.shape[0] == 2 and ds.test_x.shape[0] == 4
    assert ds.val_y.tolist() == [0, 1] and "val/" in ds.val_source


def test_grayscale_folder_has_one_channel(tmp_path):
    files = {k: _png(7, mode="L") for k in _files()}
    ds = load_dataset(_write_zip(tmp_path / "gray.zip", files), cache_dir=tmp_path / "c",
                      val_fraction=None)
    assert ds.in_channels == 1 and ds.test_x.shape == (4, 1, 5, 6)


def test_corrupt_image_names_the_file(tmp_path):
    files = _files()
    files["train/cat/1.png"] = b"\x89PNG this is not an image"
    z = _write_zip(tmp_path / "bad.zip", files)
    with pytest.raises(ValueError, match=r"bad\.zip:train/cat/1\.png"):
        load_dataset(z, cache_dir=tmp_path / "cache")


def test_image_of_another_size_names_the_file(tmp_path):
    files = _files()
    files["test/ant/1.png"] = _png((1, 2, 3), size=(7, 7))
    with pytest.raises(ValueError, match=r"test/ant/1\.png is 7×7"):
        load_dataset(_write_zip(tmp_path / "sizes.zip", files), cache_dir=tmp_path / "cache")


def test_not_an_image_folder(tmp_path):
    z = _write_zip(tmp_path / "flat.zip", {"a.png": _png((0, 0, 0))})
    with pytest.raises(ValueError, match="expected train/<class>/<image>"):
        load_dataset(z, cache_dir=tmp_path / "cache")


def test_missing_path_or_unknown_name():
    with pytest.raises(FileNotFoundError, match="neither a known dataset"):
        load_dataset("/no/such/dir.zip")
    with pytest.raises(FileNotFoundError, match="digits"):
        load_dataset("imagenet-99")


def test_torchvision_name_offline_fails_with_advice(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setattr(hdata, "_reachable", lambda host, timeout=3.0: False)   # never download
    with pytest.raises(DatasetUnavailableError, match="--data-root DIR"):
        load_dataset("cifar10", cache_dir=tmp_path)
    with pytest.raises(DatasetUnavailableError, match="no KMNIST files found under"):
        load_dataset("kmnist", cache_dir=tmp_path, root=tmp_path)
    assert "kmnist" in hdata.list_datasets()


@pytest.mark.parametrize("name,cls,hwc", [("cifar10", "CIFAR10", True), ("mnist", "MNIST", False)])
def test_torchvision_arrays_are_converted(tmp_path, monkeypatch, name, cls, hwc):
    """The conversion of an already-downloaded torchvision set (a stand-in class, no files)."""
    tvd = pytest.importorskip("torchvision.datasets")

    class Fake:
        classes = ["zero", "one"]

        def __init__(self, root, train, download):
            n = 6 if train else 4
            shape = (n, 5, 5, 3) if hwc else (n, 5, 5)
            data = torch.arange(n * 75 // (1 + 2 * (not hwc))).reshape(shape) % 256
            self.data = data.to(torch.uint8).numpy() if hwc else data.to(torch.uint8)
            self.targets = [i % 2 for i in range(n)]

    monkeypatch.setattr(tvd, cls, Fake)
    ds = load_dataset(name, cache_dir=tmp_path, val_fraction=None)
    c = 3 if hwc else 1
    assert ds.train_x.shape == (6, c, 5, 5) and ds.test_x.shape == (4, c, 5, 5)
    assert ds.train_y.tolist() == [0, 1, 0, 1, 0, 1] and ds.classes == ["zero", "one"]
    expected = Fake(None, True, False).data
    expected = torch.as_tensor(expected).permute(0, 3, 1, 2) if hwc else expected[:, None]
    assert torch.equal(ds.train_x, expected)


def test_reachable_is_false_for_a_bad_host():
    assert hdata._reachable("host.invalid", timeout=2.0) is False


def test_fashion_mnist_through_torchvision_from_the_shared_raw_files(tmp_path):
    """The genuine Fashion-MNIST gzip files (read-only, torchvision's layout) → torchvision's
    FashionMNIST class, decompressed into the cache, never beside the originals."""
    pytest.importorskip("torchvision")
    raw = require("FashionMNIST/raw")
    before = sorted(p.name for p in raw.iterdir())
    cache = tmp_path / "cache"
    ds = load_dataset("fashion-mnist", cache_dir=cache, root=raw.parent.parent)
    assert ds.train_x.shape == (54000, 1, 28, 28) and ds.val_x.shape == (6000, 1, 28, 28)
    assert ds.test_x.shape == (10000, 1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert ds.classes[0] == "T-shirt/top" and ds.source == "torchvision FashionMNIST"
    assert torch.bincount(ds.val_y).tolist() == [600] * 10         # stratified
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:          # labels as in the file
        assert ds.test_y[:20].tolist() == list(f.read()[8:28])
    assert sorted(p.name for p in raw.iterdir()) == before
    assert (cache / "torchvision" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
    again = load_dataset("fashion-mnist", cache_dir=cache, root=raw)   # the raw folder itself
    assert torch.equal(again.val_x, ds.val_x)


# ------------------------------------------------------------------------------------- batches

def _toy(n=10, c=3, h=6, w=5) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 3
    return ImageDataset("toy", x, y, x.clone(), y.clone(), ["a", "b", "c"])


def test_batches_normalize_and_cover(digits):
    b = digits.batches("train", 100, shuffle=False)
    xs, ys = zip(*b)
    assert len(b) == 13 and [len(y) for y in ys][-1] == 93
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and x.shape == (1293, 1, 8, 8)
    assert x.mean().item() == pytest.approx(0, abs=1e-5)
    assert x.std().item() == pytest.approx(1, abs=1e-3)
    assert torch.equal(torch.cat(ys), digits.train_y)
    assert len(digits.batches("train", 100, drop_last=True)) == 12


def test_shuffle_is_a_permutation_and_reproducible(digits):
    def labels(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in digits.batches("train", 64, generator=g)])

    a, b, c = labels(1), labels(1), labels(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, digits.train_y.sort().values)


@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
def test_crop_flip_matches_reference(pad_mode):
    ds = _toy()
    gen = torch.Generator().manual_seed(3)
    b = ds.batches("train", 10, shuffle=False, augment=True, hflip=True, pad=2, pad_mode=pad_mode,
                   generator=gen)
    x, _ = next(iter(b))
    gen.manual_seed(3)     # replay the draws: offsets for all samples, then flips
    offsets = torch.randint(0, 5, (10, 2), generator=gen)
    flips = torch.rand(10, generator=gen) < 0.5
    padded = F.pad(ds.train_x.float(), (2, 2, 2, 2),
                   mode="reflect" if pad_mode == "reflect" else "constant")
    ref = torch.stack([padded[i, :, oy:oy + 6, ox:ox + 5]
                       for i, (oy, ox) in enumerate(offsets.tolist())])
    ref = torch.where(flips[:, None, None, None], ref.flip(3), ref)
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (ref / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert flips.any() and not flips.all() and (offsets != 2).any()


def test_flip_off_and_no_augment_are_identity():
    ds = _toy()
    plain, _ = next(iter(ds.batches("train", 10, shuffle=False)))
    # pad 0 and no flip: augmentation must be the identity
    same, _ = next(iter(ds.batches("train", 10, shuffle=False, augment=True, hflip=False, pad=0)))
    torch.testing.assert_close(same, plain)


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (11, 6, 3), (7, 7, 2)])
def test_ddp_shards_partition_each_global_batch(n, batch, world):
    ds = _toy(n=n)
    ds.train_y = torch.arange(n)      # label = index, to see which samples each rank gets
    per_rank = []
    for rank in range(world):
        b = ds.batches("train", batch, rank=rank, world_size=world,
                       generator=torch.Generator().manual_seed(5))
        per_rank.append([y for _, y in b])
    single = [y for _, y in ds.batches("train", batch, generator=torch.Generator().manual_seed(5))]
    assert all(len(r) == len(single) for r in per_rank)
    for i, global_batch in enumerate(single):
        assert torch.equal(torch.cat([r[i] for r in per_rank]), global_batch)


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (11, 1024, 3), (2, 8, 3)])
def test_ddp_split_shards_cover_the_split_once(n, batch, world):
    ds = _toy(n=n)
    ds.test_y = torch.arange(n)
    seen = [y for rank in range(world)
            for _, y in ds.batches("test", batch, rank=rank, world_size=world)]
    assert torch.equal(torch.cat(seen), torch.arange(n))


def test_batches_on_cuda_stay_on_device():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ds = _toy()
    b = ds.batches("train", 4, device="cuda", augment=True, channels_last=True)
    x, y = next(iter(b))
    assert x.is_cuda and y.is_cuda and b.x.is_cuda
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments():
    ds = _toy()
    with pytest.raises(ValueError, match="has no validation split"):
        ds.batches("val", 4)
    with pytest.raises(ValueError, match="batch_size"):
        ds.batches("train", 0)
    with pytest.raises(ValueError, match="pad_mode"):
        ds.batches("train", 4, pad_mode="edge")
    with pytest.raises(ValueError, match="train_x must be uint8"):
        ImageDataset("bad", ds.train_x.float(), ds.train_y, ds.test_x, ds.test_y, ["a"])


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HTAF_CACHE", str(tmp_path))
    assert hdata.cache_dir() == tmp_path
    assert hdata.cache_dir("~/x") == Path(os.path.expanduser("~/x"))


def test_normalize_matches_the_training_batches_bitwise(digits):
    (x, _), = digits.batches("test", len(digits.test_x), shuffle=False)
    assert torch.equal(digits.normalize(digits.test_x), x)
    (v, y), = digits.batches("val", len(digits.val_x))
    assert torch.equal(digits.normalize(digits.val_x), v) and torch.equal(y, digits.val_y)


# ----------------------------------------------------------------- memory layout of the batches
#
# Minimal reproduction of the heap corruption this layout avoids (torch 2.14.1, oneDNN 3.12, one
# thread; it aborts with "corrupted size vs. prev_size" or a segfault):
#
#     OMP_NUM_THREADS=1 python -c "
#     import torch
#     for _ in range(20):
#         x = torch.randn(128, 4, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
#         w = torch.randn(8, 4, 1, 1, requires_grad=True)
#         y = torch.nn.functional.conv2d(x, w, stride=2)
#         y.backward(torch.randn_like(y))"
#
# One-channel batches made by addcmul got strides (H·W, 1, W, 1), which PyTorch also reads as
# channels_last, so a ResNet on digits ran channels_last and its 1×1 stride-2 shortcut hit it.

@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_have_the_requested_memory_layout(digits, augment, channels_last):
    x, _ = next(iter(digits.batches("train", 16, augment=augment, channels_last=channels_last)))
    b, c, h, w = x.shape
    expected = (h * w * c, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1)
    assert x.stride() == expected
    assert digits.normalize(digits.test_x[:4]).stride() == (c * h * w, h * w, w, 1)


def test_resnet_on_one_thread_trains_without_corrupting_memory(tmp_path):
    """The command that aborted the test suite (heap corruption in oneDNN, see above)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "htaf", "train", "--model", "std_resnet18", "--width", "4",
         "--epochs", "1", "--batch-size", "128", "--out", "none", "--log", "none"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
