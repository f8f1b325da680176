"""Deep Heaviside Networks (DHN): MLPs and VGG-style CNNs whose hidden activations are steps.

Every hidden layer is ``linear/conv → norm → activation``, with the activation from
:func:`htaf.nn.create_act`:

* ``"htaf"`` — smooth HTAF during training (anneal γ so it ends binary), evaluated **hard**
  (``htaf.nn.set_mode(model, "hard")``): the deployed network computes 1[x ≥ 0];
* ``"htaf_st"`` or any surrogate name (``"sigmoid"``, ``"atan"``, ``"ste"``, ...) — the forward
  pass is already the exact step, the backward pass that surrogate's derivative;
* ``"relu"`` — the same architecture in full precision: the accuracy ceiling.

``act_params`` go to the activation, e.g. ``{"alpha": 2.0}`` to change a surrogate's scale.

**Normalization matters.** A step only carries information when its input straddles 0. Without a
normalization right before it, pre-activations of a deep stack drift to one side and whole layers
go dead (constant 0 or 1), and nothing can recover them since the forward is flat. BatchNorm
(the default) re-centres every unit on the batch and, through its learned shift, gives each unit
a trainable threshold; LayerNorm (``norm="layer"``) does the same per sample. ``norm="none"`` is
there for the ablation. The linear/conv layers before a norm have no bias (the norm's shift is it).

The classifier head (``Linear`` after the last hidden layer, or after global average pooling in
the CNN) is full precision, as in the DHN literature: it reads binary features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_choice, check_int, check_real
from ..nn import create_act
from .registry import register_model

__all__ = ["DHNMLP", "DHNCNN", "dhn_mlp", "dhn_cnn", "NORMS"]

NORMS = ("batch", "layer", "none")


def _act(activation: str, act_params: dict | None) -> nn.Module:
    if act_params is not None and not isinstance(act_params, dict):
        raise ValueError(f"act_params must be a dict, got {act_params!r}")
    return create_act(activation, family="dhn", **(act_params or {}))


class DHNMLP(nn.Module):
    """``depth`` hidden layers ``Linear(width) → norm → step → dropout``, then a linear head.

    Args:
        in_features: input size (images are flattened).
        num_classes: output logits.
        depth: number of hidden (binary) layers, ≥ 0 (0 is a linear classifier).
        width: units per hidden layer.
        activation: ``"htaf"`` | ``"htaf_st"`` | surrogate name | ``"relu"``.
        act_params: keyword arguments for the activation (e.g. ``{"beta": 8.0}``).
        norm: ``"batch"`` (default) | ``"layer"`` | ``"none"`` — before each activation.
        dropout: dropout probability after each hidden activation.
    """

    def __init__(self, in_features: int, num_classes: int, depth: int = 6, width: int = 256,
                 activation: str = "htaf", act_params: dict | None = None, norm: str = "batch",
                 dropout: float = 0.0):
        super().__init__()
        in_features = check_int("in_features", in_features, low=1)
        num_classes = check_int("num_classes", num_classes, low=1)
        depth = check_int("depth", depth, low=0)
        width = check_int("width", width, low=1)
        check_choice("norm", norm, NORMS)
        dropout = check_real("dropout", dropout, low=0.0, strict=False)
        if dropout >= 1.0:
            raise ValueError(f"dropout must be < 1, got {dropout:g}")
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(width))
            elif norm == "layer":
                layers.append(nn.LayerNorm(width))
            layers.append(_act(activation, act_params))
            if dropout:
                layers.append(nn.Dropout(dropout))
            fan_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, num_classes)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != self.in_features:
            raise ValueError(f"dhn_mlp expects {self.in_features} input features per sample, got "
                             f"{x[0].numel()} (shape {tuple(x.shape)})")
        return self.head(self.features(x))


def _default_widths(depth: int, base: int = 128, pool_every: int = 2, cap: int = 512) -> list[int]:
    """128, 128, 256, 256, 512, 512, 512, ...: double every ``pool_every`` convs up to ``cap``."""
    return [min(base * 2 ** (i // pool_every), cap) for i in range(depth)]


class DHNCNN(nn.Module):
    """VGG-style Heaviside CNN: 3×3 convs ``conv → BatchNorm → step``, 2×2 max-pool after every
    ``pool_every``-th conv (while the map is at least 2×2), global average pool, linear head.

    The default (``depth=6``) is the probe network of ``PROBES.md``: widths 128-128-256-256-512-512.

    Args:
        in_channels, image_size, num_classes: from the data.
        widths: conv widths, one per layer (overrides ``depth``).
        depth: number of conv layers when ``widths`` is not given (≥ 1).
        width_mult: multiplies every width (e.g. 0.125 for a tiny test network).
        activation, act_params: as in :class:`DHNMLP`.
        norm: ``"batch"`` (default) | ``"none"``.
        pool_every: max-pool after every this many convs.
        dropout: dropout before the head.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 widths: Sequence[int] | None = None, depth: int = 6, width_mult: float = 1.0,
                 activation: str = "htaf", act_params: dict | None = None, norm: str = "batch",
                 pool_every: int = 2, dropout: float = 0.0):
        super().__init__()
        in_channels = check_int("in_channels", in_channels, low=1)
        size = check_int("image_size", image_size, low=1)
        num_classes = check_int("num_classes", num_classes, low=1)
        pool_every = check_int("pool_every", pool_every, low=1)
        width_mult = check_real("width_mult", width_mult, low=0.0)
        check_choice("norm", norm, ("batch", "none"))
        dropout = check_real("dropout", dropout, low=0.0, strict=False)
        if dropout >= 1.0:
            raise ValueError(f"dropout must be < 1, got {dropout:g}")
        if widths is None:
            widths = _default_widths(check_int("depth", depth, low=1), pool_every=pool_every)
        widths = [check_int(f"widths[{i}]", w, low=1) for i, w in enumerate(widths)]
        if not widths:
            raise ValueError("widths must name at least one conv layer")
        widths = [max(1, math.ceil(w * width_mult)) for w in widths]

        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(c, w, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(w))
            layers.append(_act(activation, act_params))
            if (i + 1) % pool_every == 0 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool(self.features(x))))


@register_model("dhn_mlp", family="dhn")
def dhn_mlp(*, in_channels: int | None = None, image_size: int | None = None,
            in_features: int | None = None, num_classes: int = 10, depth: int = 6,
            width: int = 256, activation: str = "htaf", act_params: dict | None = None,
            norm: str = "batch", dropout: float = 0.0) -> DHNMLP:
    """Deep Heaviside MLP; ``in_features`` or ``in_channels · image_size²``."""
    if in_features is None:
        if in_channels is None or image_size is None:
            raise ValueError("dhn_mlp needs in_features, or in_channels and image_size")
        in_features = check_int("in_channels", in_channels, low=1) * \
            check_int("image_size", image_size, low=1) ** 2
    return DHNMLP(in_features, num_classes, depth=depth, width=width, activation=activation,
                  act_params=act_params, norm=norm, dropout=dropout)


@register_model("dhn_cnn", family="dhn")
def dhn_cnn(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
            widths: Sequence[int] | None = None, depth: int = 6, width_mult: float = 1.0,
            activation: str = "htaf", act_params: dict | None = None, norm: str = "batch",
            pool_every: int = 2, dropout: float = 0.0) -> DHNCNN:
    """VGG-style Deep Heaviside CNN (the probe network by default)."""
    return DHNCNN(in_channels, image_size, num_classes, widths=widths, depth=depth,
                  width_mult=width_mult, activation=activation, act_params=act_params, norm=norm,
                  pool_every=pool_every, dropout=dropout)
