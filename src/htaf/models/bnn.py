r"""Binary neural networks: BinaryNet-style VGG-small, Bi-Real/ReActNet-style ResNet-18, an MLP.

Every factory takes the model contract's keywords (``in_channels``, ``image_size``,
``num_classes``) and ``activation``, the surrogate of the sign of the activations:

* ``"htaf_st"`` — sign forward, 2·HTAF'(x) backward (the default);
* ``"ste"``, ``"approx_sign"``, ``"swish_sign"`` or any registered surrogate name;
* ``"relu"`` — the full-precision ceiling: the same architecture with real weights and ReLU.

``"htaf"`` (smooth HTAF) is an error here, as in every family where it cannot train: a BNN's signs
are exact in training (:func:`htaf.surrogates.resolve_activation`).

``act_params`` (a dict, e.g. ``{"alpha": 2.0}``) sets the surrogate's own parameters, as for the
other families (``htaf compare --scales`` passes it).

Weights are sign(W) with clipped-STE gradient (``weight_quantizer``) and a per-output-channel scale
(``scale="channel"``). The first and last layers are full precision unless ``binary_first`` /
``binary_last``. The sign of a layer's input lives inside the binary layer (its input quantizer),
so the layer before it ends with BatchNorm (BinaryNet's conv → pool → BN → sign order).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int, check_real
from ..nn.binary import BinaryConv2d, BinaryLinear
from ..surrogates import resolve_activation
from .registry import register_model

__all__ = ["bnn_vgg_small", "bnn_resnet18", "bnn_mlp", "LearnableBias", "RPReLU"]

class _Layers:
    """Builds conv/linear layers for one model: binary ones or, for the ceiling, real ones."""

    def __init__(self, activation: str, weight_quantizer, scale, clip, act_params=None):
        if act_params is not None and not isinstance(act_params, dict):
            raise ValueError(f"act_params must be a dict, got {act_params!r}")
        spec = resolve_activation(activation, act_params, family="bnn")
        self.real = not spec.binary
        self.kw = dict(input_quantizer=spec.surrogate, weight_quantizer=weight_quantizer,
                       scale=scale, clip=clip)
        if not self.real:  # fail now, not at the first forward, on a bad weight quantizer
            BinaryLinear(1, 1, **self.kw)

    def conv(self, cin, cout, k, stride=1, padding=0, *, binary=True, bias=False) -> nn.Module:
        if binary and not self.real:
            return BinaryConv2d(cin, cout, k, stride, padding, bias=bias, **self.kw)
        return nn.Conv2d(cin, cout, k, stride, padding, bias=bias)

    def linear(self, fin, fout, *, binary=True, bias=True) -> nn.Module:
        if binary and not self.real:
            return BinaryLinear(fin, fout, bias=bias, **self.kw)
        return nn.Linear(fin, fout, bias=bias)

    def act(self) -> nn.Module:
        """The ceiling's nonlinearity; nothing for a BNN (the next layer's sign is)."""
        return nn.ReLU(inplace=True) if self.real else nn.Identity()


def _width(c: int, width_mult: float) -> int:
    return max(1, round(c * width_mult))


def _check_common(in_channels, image_size, num_classes, width_mult):
    check_int("in_channels", in_channels, low=1)
    check_int("image_size", image_size, low=1)
    check_int("num_classes", num_classes, low=2)
    check_real("width_mult", width_mult, low=0.0)


@register_model("bnn_vgg_small", family="bnn")
def bnn_vgg_small(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                  activation: str = "htaf_st", width_mult: float = 1.0, binary_first: bool = False,
                  binary_last: bool = False, weight_quantizer: str | None = "ste",
                  scale: str | None = "channel", clip: float | None = 1.0,
                  hidden: int = 0, dropout: float = 0.0,
                  act_params: dict | None = None) -> nn.Sequential:
    """BinaryNet-style VGG-small: 128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-[FC hidden]-FC.

    Each conv is followed by (max-pool and) BatchNorm; the next binary layer takes the sign.
    ``width_mult`` scales every width (e.g. 0.125 for a tiny test model); ``hidden > 0`` adds a
    binary FC layer of that width before the classifier (BinaryNet used two of 1024).
    ``image_size`` ≥ 8: three 2×2 pools, each rounding down (28 → 14 → 7 → 3).
    """
    _check_common(in_channels, image_size, num_classes, width_mult)
    if image_size < 8:
        raise ValueError(f"bnn_vgg_small needs image_size >= 8 (three 2×2 pools), got {image_size}")
    check_int("hidden", hidden, low=0)
    L = _Layers(activation, weight_quantizer, scale, clip, act_params)
    w = [_width(c, width_mult) for c in (128, 128, 256, 256, 512, 512)]
    layers: list[nn.Module] = []
    cin = in_channels
    for i, cout in enumerate(w):
        layers.append(L.conv(cin, cout, 3, 1, 1, binary=binary_first or i > 0))
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(cout), L.act()]
        cin = cout
    layers.append(nn.Flatten())
    features = cin * (image_size // 8) ** 2
    if hidden:
        layers += [L.linear(features, hidden, bias=False), nn.BatchNorm1d(hidden), L.act()]
        features = hidden
    if dropout:
        layers.append(nn.Dropout(check_real("dropout", dropout, low=0.0, strict=False)))
    layers.append(L.linear(features, num_classes, binary=binary_last))
    return nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)])


class LearnableBias(nn.Module):
    """x − b per channel, b learnable (ReActNet's RSign threshold when put before a sign)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.bias.view(1, -1, *([1] * (x.dim() - 2)))


class RPReLU(nn.Module):
    """ReActNet's RPReLU: PReLU(x − γ) + ζ, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.prelu(x - self.shift_in.view(shape)) + self.shift_out.view(shape)


class BiRealBlock(nn.Module):
    """One binary conv with its own real-valued shortcut (Bi-Real Net):
    ``out = act(BN(conv(threshold(x))) + shortcut(x))``.

    The shortcut is the identity, or (stride 2 / new width) 2×2 average pooling and a real 1×1
    conv + BN. ``act`` is RPReLU (``rprelu=True``), ReLU for the real ceiling, else nothing.
    """

    def __init__(self, L: _Layers, cin: int, cout: int, stride: int, learnable_threshold: bool,
                 rprelu: bool):
        super().__init__()
        self.threshold = LearnableBias(cin) if learnable_threshold and not L.real else nn.Identity()
        self.conv = L.conv(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        else:
            pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False),
                                          nn.BatchNorm2d(cout))
        self.act = RPReLU(cout) if rprelu and not L.real else L.act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.threshold(x))) + self.shortcut(x))


class BNNResNet(nn.Module):
    def __init__(self, stem: nn.Module, blocks: nn.Sequential, head: nn.Module):
        super().__init__()
        self.stem, self.blocks, self.head = stem, blocks, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model("bnn_resnet18", family="bnn")
def bnn_resnet18(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 activation: str = "htaf_st", width_mult: float = 1.0, binary_first: bool = False,
                 binary_last: bool = False, weight_quantizer: str | None = "ste",
                 scale: str | None = "channel", clip: float | None = 1.0,
                 learnable_threshold: bool = False, rprelu: bool = False,
                 act_params: dict | None = None) -> BNNResNet:
    """Bi-Real/ReActNet-style ResNet-18: 16 binary 3×3 convs, each with a real shortcut, in four
    stages of widths 64-128-256-512 (× ``width_mult``). Stem: 3×3 conv (``image_size`` < 64, CIFAR)
    or 7×7/2 conv + 3×3/2 max-pool (ImageNet-sized), real unless ``binary_first``; head: global
    average pool + FC, real unless ``binary_last``. ``learnable_threshold``: a learnable per-channel
    shift before each sign (RSign); ``rprelu``: RPReLU after each block's addition."""
    _check_common(in_channels, image_size, num_classes, width_mult)
    L = _Layers(activation, weight_quantizer, scale, clip, act_params)
    widths = [_width(c, width_mult) for c in (64, 128, 256, 512)]
    if image_size < 64:
        stem = nn.Sequential(L.conv(in_channels, widths[0], 3, 1, 1, binary=binary_first),
                             nn.BatchNorm2d(widths[0]), L.act())
    else:
        stem = nn.Sequential(L.conv(in_channels, widths[0], 7, 2, 3, binary=binary_first),
                             nn.BatchNorm2d(widths[0]), L.act(), nn.MaxPool2d(3, 2, 1))
    blocks = []
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for i in range(4):  # two basic blocks of two convs each
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(BiRealBlock(L, cin, cout, stride, learnable_threshold, rprelu))
            cin = cout
    head = L.linear(cin, num_classes, binary=binary_last)
    return BNNResNet(stem, nn.Sequential(*blocks), head)


@register_model("bnn_mlp", family="bnn")
def bnn_mlp(*, in_channels: int = 1, image_size: int = 8, num_classes: int = 10,
            in_features: int | None = None, activation: str = "htaf_st", hidden=(256, 256),
            binary_first: bool = False, binary_last: bool = False,
            weight_quantizer: str | None = "ste", scale: str | None = "channel",
            clip: float | None = 1.0, act_params: dict | None = None) -> nn.Sequential:
    """Flatten → [Linear → BN] per hidden width → Linear. The first Linear is real unless
    ``binary_first``, the classifier real unless ``binary_last``; every other Linear is binary
    (its sign taking the previous BN output)."""
    if in_features is None:
        check_int("in_channels", in_channels, low=1)
        check_int("image_size", image_size, low=1)
        in_features = in_channels * image_size * image_size
    check_int("in_features", in_features, low=1)
    check_int("num_classes", num_classes, low=2)
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    for h in hidden:
        check_int("hidden", h, low=1)
    L = _Layers(activation, weight_quantizer, scale, clip, act_params)
    layers: list[nn.Module] = [nn.Flatten()]
    fin = in_features
    for i, h in enumerate(hidden):
        layers += [L.linear(fin, h, binary=binary_first or i > 0, bias=False),
                   nn.BatchNorm1d(h), L.act()]
        fin = h
    layers.append(L.linear(fin, num_classes, binary=binary_last or not hidden and binary_first))
    return nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)])
