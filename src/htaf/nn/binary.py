r"""Binary layers: :class:`BinaryLinear` and :class:`BinaryConv2d`, drop-in for ``nn.Linear`` and
``nn.Conv2d`` (same positional signature, same ``weight``/``bias`` parameters; the state_dict adds
only the quantizers' hyperparameter buffers, so a float checkpoint loads with ``strict=False``).

Forward, with x the layer input and W the latent real weights::

    x_b = sign(x)              ∈ {−1, +1}   (input quantizer; sign(0) = +1)
    W_b = sign(W)              ∈ {−1, +1}   (weight quantizer)
    y   = (x_b ⊛ W_b) · α + b               (α = mean|W| per output channel, or 1)

The op (``F.linear``/``F.conv2d``) sees exactly ±1 on both sides, so its output is an exact
integer; α and the bias are applied afterwards. This is what makes the packed-bit deployment path
(:mod:`htaf.deploy`) equal to this layer bit for bit.

Backward: the input gets the surrogate's sign derivative (2·HTAF'(x) by default); the latent
weights get the weight surrogate's (clipped STE by default: 1[|W| ≤ 1], as Larq's ``ste_sign`` and
BinaryConnect); α is treated as a constant (stop-gradient, as Bi-Real Net's magnitude-aware sign).
``constrain_()`` clips the latent weights to [−clip, clip]; ``htaf.nn.apply_constraints(model)``
calls it (the engine does after each optimizer step).

Padding (``BinaryConv2d``): a zero-padded ±1 input has 0s in its border, which a binary op has no
code for. ``pad_value`` chooses: ``0`` (default, as PyTorch and Larq's default) keeps true zero
padding — the packed path handles the border exactly with a mask correction; ``+1`` or ``−1`` pads
the *binarized* input with that value so every operand stays binary (Larq's ``pad_values=1``).
``padding_mode`` other than ``"zeros"`` pads the binarized input (values stay ±1).

Mode: both quantizers are :class:`~htaf.nn.Sign` submodules (their surrogates' scales are
buffers), called in every mode, so ``htaf.set_mode(model, "hard")`` switches them and forward
hooks see what they output; ``layer.mode`` reads/writes the input quantizer's. Hard mode is the
same exact sign with no autograd graph, in plain PyTorch ops (exports to ONNX). NaN in gives NaN
out in every mode, with or without gradient tracking.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as TF

from .._checks import check_choice, check_real
from ..surrogates import Surrogate, resolve_activation
from .activation import BinaryActivation, Sign

__all__ = ["BinaryLinear", "BinaryConv2d", "BinaryLayer", "hard_sign", "binary_layers"]


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1 and NaN kept, no gradient, plain PyTorch ops (exports to ONNX)."""
    return torch.where(torch.isnan(x), x, torch.where(x >= 0, 1.0, -1.0).to(x.dtype))


def _make_quantizer(spec, what: str) -> Sign | None:
    """``None`` (full precision), a ready :class:`Sign`, or an activation name or surrogate that
    :func:`htaf.surrogates.resolve_activation` reads as a straight-through sign."""
    if spec is None:
        return None
    if isinstance(spec, BinaryActivation):
        if not spec.signed:
            raise ValueError(f"{what} must be a signed activation (htaf.nn.Sign), "
                             f"got {type(spec).__name__}")
        return spec
    if not isinstance(spec, (str, Surrogate)):
        raise ValueError(f"{what} must be None, a surrogate name or a Sign module, got {spec!r}")
    act = resolve_activation(spec, family="bnn")
    if not act.binary:
        raise ValueError(f"{what} must be a surrogate name (e.g. 'htaf_st', 'ste'), got {spec!r}")
    return Sign(act.surrogate, mode=act.mode)


class BinaryLayer:
    """Mixin holding what :class:`BinaryLinear` and :class:`BinaryConv2d` share: quantizers,
    scaling, clipping, mode. ``self.weight``/``self.bias`` come from the ``nn`` base class."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_binary(self, input_quantizer, weight_quantizer, scale, clip) -> None:
        self.input_quantizer = _make_quantizer(input_quantizer, "input_quantizer")
        self.weight_quantizer = _make_quantizer(weight_quantizer, "weight_quantizer")
        self.scale = check_choice("scale", scale, ("channel", None))
        self.clip = None if clip is None else check_real("clip", clip, low=0.0)

    # -- what the packed path and the tests inspect ---------------------------------------
    @property
    def binary_input(self) -> bool:
        return self.input_quantizer is not None

    @property
    def binary_weight(self) -> bool:
        return self.weight_quantizer is not None

    @property
    def mode(self) -> str:
        return self.input_quantizer.mode if self.input_quantizer is not None else "hard"

    @mode.setter
    def mode(self, value: str) -> None:
        if self.input_quantizer is not None:
            self.input_quantizer.mode = value

    def weight_scale(self) -> torch.Tensor | None:
        """α: mean |W| over everything but the output channel, detached; ``None`` without scale."""
        if self.scale is None or not self.binary_weight:
            return None
        w = self.weight.detach()
        return w.abs().mean(dim=tuple(range(1, w.dim())))

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """sign(x) through the input quantizer, in its mode (the same values with or without
        gradient tracking); ``x`` itself for a full-precision input."""
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quantize_weight(self) -> torch.Tensor:
        """sign(W) through the weight quantizer (W itself for real weights)."""
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def _finish(self, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """y · α + b, broadcast along ``channel_dim`` (the exact order the packed path uses)."""
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        alpha = self.weight_scale()
        if alpha is not None:
            y = y * alpha.to(y.dtype).view(shape)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(shape)
        return y

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clip the latent weights to [−clip, clip] (called by ``htaf.nn.apply_constraints``)."""
        if self.binary_weight and self.clip is not None:
            self.weight.clamp_(-self.clip, self.clip)

    def _binary_repr(self) -> str:
        iq = "none" if self.input_quantizer is None else (
            f"{self.input_quantizer.surrogate.name}/{self.input_quantizer.mode}")
        wq = "none" if self.weight_quantizer is None else self.weight_quantizer.surrogate.name
        return f"input_quantizer={iq}, weight_quantizer={wq}, scale={self.scale}, clip={self.clip}"


class BinaryLinear(BinaryLayer, nn.Linear):
    """``nn.Linear`` with binary (±1) inputs and weights.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        input_quantizer: surrogate for sign(x): ``"htaf_st"`` (default; 2·HTAF' backward), any
            registered surrogate name or instance, a :class:`~htaf.nn.Sign` module, or ``None``
            for full-precision inputs.
        weight_quantizer: surrogate for sign(W): ``"ste"`` (default, clipped STE) or any name or
            :class:`~htaf.nn.Sign`; ``None`` keeps real weights.
        scale: ``"channel"`` (default) for α = mean|W| per output unit, ``None`` for none.
        clip: latent weights are clipped to [−clip, clip] by ``constrain_()`` (``None``: never).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 input_quantizer="htaf_st", weight_quantizer="ste",
                 scale: str | None = "channel", clip: float | None = 1.0, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_binary(input_quantizer, weight_quantizer, scale, clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = TF.linear(self.quantize_input(x), self.quantize_weight())
        return self._finish(y, -1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """``nn.Conv2d`` with binary (±1) inputs and weights; arguments as :class:`BinaryLinear` plus
    ``pad_value`` (0, +1 or −1: what the zero padding of the binarized input holds; see the module
    docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 input_quantizer="htaf_st", weight_quantizer="ste",
                 scale: str | None = "channel", clip: float | None = 1.0, pad_value: float = 0.0,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device=device, dtype=dtype)
        if isinstance(self.padding, str):
            raise ValueError("BinaryConv2d needs explicit integer padding, not "
                             f"padding={self.padding!r}")
        self._init_binary(input_quantizer, weight_quantizer, scale, clip)
        if pad_value not in (0, 1, -1):
            raise ValueError(f"pad_value must be 0, 1 or -1, got {pad_value!r}")
        if pad_value != 0 and padding_mode != "zeros":
            raise ValueError("pad_value applies to padding_mode='zeros' only")
        self.pad_value = float(pad_value)

    def pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pad the (binarized) input as this layer does; return it and the padding left to
        ``F.conv2d`` (non-zero only for true zero padding)."""
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x, (0, 0)
        if self.padding_mode != "zeros":
            return TF.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)
        if self.pad_value != 0 and self.binary_input:
            return TF.pad(x, (pw, pw, ph, ph), value=self.pad_value), (0, 0)
        return x, (ph, pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb, padding = self.pad_input(self.quantize_input(x))
        y = TF.conv2d(xb, self.quantize_weight(), None, self.stride, padding, self.dilation,
                      self.groups)
        return self._finish(y, 1)

    def extra_repr(self) -> str:
        extra = f", pad_value={self.pad_value:g}" if self.pad_value else ""
        return f"{super().extra_repr()}, {self._binary_repr()}{extra}"


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    """(name, layer) for every :class:`BinaryLinear`/:class:`BinaryConv2d` in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer)]

