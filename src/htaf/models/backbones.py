"""Image backbones that end in a flat feature vector ``[B, feat_dim]`` (no classifier head).

* :class:`SmallCNN` — three conv–BN–ReLU stages and global average pooling; for digits/MNIST.
* :class:`CifarResNet18` — ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool);
  ``width`` scales every stage (64 is the standard network, 8 is enough for a unit test).
* :func:`torchvision_backbone` — any torchvision classifier by name, its final linear layer removed;
  weights from a local file or from torchvision's cache, never downloaded.

Each returns ``(module, feat_dim)`` through :func:`build_backbone` so heads can be sized.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .._checks import check_int

__all__ = ["CifarResNet18", "SmallCNN", "build_backbone", "torchvision_backbone"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Sequential):
    """conv(w)–conv(2w)–conv(4w), each 3×3 + BN + ReLU, 2×2 max-pool after a stage while the map is
    at least 8 pixels wide, then global average pooling: ``feat_dim = 4·width``."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, width: int = 32):
        check_int("in_channels", in_channels, low=1)
        check_int("image_size", image_size, low=1)
        check_int("width", width, low=1)
        layers, cin, size = [], in_channels, image_size
        for cout in (width, 2 * width, 4 * width):
            layers.append(_conv_bn_relu(cin, cout))
            if size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.feat_dim = cin


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for small images: 3×3 stem, no max-pool, stages of 2 basic blocks with
    ``width·(1, 2, 4, 8)`` channels (strides 1, 2, 2, 2), global average pooling;
    ``feat_dim = 8·width``."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        check_int("in_channels", in_channels, low=1)
        check_int("width", width, low=1)
        self.stem = _conv_bn_relu(in_channels, width)
        blocks, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            for j in range(2):
                blocks.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feat_dim = cin

    def forward(self, x):
        return self.pool(self.layers(self.stem(x)))


def _set_child(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _torchvision_weights(name: str, weights: str):
    """Resolve a torchvision weights enum name (``"ResNet18_Weights.IMAGENET1K_V1"`` or
    ``"IMAGENET1K_V1"``) and return its state dict from torchvision's local cache only."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    member = weights.rpartition(".")[2]
    try:
        w = enum[member]
    except KeyError:
        raise ValueError(f"pretrained_weights {weights!r} is not a weight of {name}; available: "
                         f"{', '.join(m.name for m in enum)}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    if not cached.is_file():
        raise FileNotFoundError(f"{weights} is not in torchvision's cache ({cached}); download it "
                                f"where you have a network or pass pretrained_weights=PATH")
    return torch.load(cached, map_location="cpu", weights_only=True)


def torchvision_backbone(name: str, in_channels: int = 3, pretrained_weights: str | None = None
                         ) -> tuple[nn.Module, int]:
    """A torchvision classifier with its last linear layer replaced by ``nn.Identity``.

    Args:
        name: a torchvision model name (``"resnet18"``, ``"mobilenet_v3_small"``, ...).
        in_channels: if not 3, the first convolution is replaced (and trained from scratch).
        pretrained_weights: ``None`` (random init), a path to a state dict of the full torchvision
            model, or a weights enum name found in torchvision's cache. Nothing is downloaded.

    Returns ``(backbone, feat_dim)``.
    """
    try:
        from torchvision.models import get_model
    except ImportError as e:  # pragma: no cover - torchvision is an optional extra
        raise ValueError("icbm_tv needs torchvision: pip install 'htaf[vision]'") from e
    try:
        model = get_model(name, weights=None)
    except ValueError as e:
        raise ValueError(f"unknown torchvision model {name!r}") from e
    if pretrained_weights is not None:
        path = Path(pretrained_weights)
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else state
        elif path.suffix in (".pt", ".pth") or "/" in str(pretrained_weights):
            raise FileNotFoundError(f"pretrained_weights file {pretrained_weights} does not exist")
        else:
            state = _torchvision_weights(name, str(pretrained_weights))
        model.load_state_dict(state)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision model {name!r} has no final linear layer to replace")
    last = linears[-1]
    feat_dim = model.get_submodule(last).in_features
    _set_child(model, last, nn.Identity())
    if in_channels != 3:
        first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        old = model.get_submodule(first)
        _set_child(model, first, nn.Conv2d(in_channels, old.out_channels, old.kernel_size,
                                           old.stride, old.padding, bias=old.bias is not None))
    return model, feat_dim


def build_backbone(kind: str, *, in_channels: int, image_size: int, width: int | None = None,
                   arch: str | None = None, pretrained_weights: str | None = None
                   ) -> tuple[nn.Module, int]:
    """``kind`` ∈ {"cnn", "resnet18", "tv"} → ``(backbone, feat_dim)``."""
    if kind == "cnn":
        m = SmallCNN(in_channels, image_size, width or 32)
        return m, m.feat_dim
    if kind == "resnet18":
        m = CifarResNet18(in_channels, width or 64)
        return m, m.feat_dim
    if kind == "tv":
        return torchvision_backbone(arch or "resnet18", in_channels, pretrained_weights)
    raise ValueError(f"unknown backbone {kind!r}; use cnn, resnet18 or tv")
