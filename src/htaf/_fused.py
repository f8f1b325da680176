r"""Fused packed inference for a sequential BNN: binary layers hand packed bits to each other.

In ``bnn_vgg_small`` (and ``bnn_mlp``) a binary layer is followed by an optional max-pool and a
BatchNorm, whose output only feeds the next binary layer's sign. :func:`build_plan` replaces
each such run ``binary layer → [MaxPool2d] → BatchNorm → [Flatten] → binary layer`` by one C
call that writes the *packed sign bits* of the next layer's input directly:

* **max-pool on the integers.** The layer's output is ``f(d) = fl(fl(d · α) + b)`` of the exact
  integer ``d`` (α ≥ 0), a non-decreasing function, so ``max_i f(d_i) = f(max_i d_i)``
  exactly: pooling the integers is the float pooling.
* **BatchNorm + sign folded into a threshold on the integer.** ``s(d) = [BN(f(d)) ≥ 0]`` is a
  composition of monotone roundings, so for each channel it is a step function of ``d``:
  ``s(d) = (d ≥ T) ⊕ flip``. ``T`` and ``flip`` are not derived from a formula (which would have
  to guess PyTorch's float order, FMA or not): every integer ``d ∈ [−n, n]`` is run through
  the *same* float ops the hard model runs — ``· α``, ``+ b``, and the model's own BatchNorm
  module, in two memory layouts that take different PyTorch kernels — and the step is read
  off the result. A layer is fused only if both layouts agree and every channel's decisions
  are monotone; otherwise it falls back to float output and the BatchNorm runs as usual.

* **BatchNorm + sign of a float input as bounds.** The first binary layer's input is a
  BatchNorm of real values (the real first conv's output). ``[BN(y) ≥ 0]`` is monotone in the
  float ``y`` too, so it is ``lo ≤ y ≤ hi`` for per-channel floats found by bisection over the
  ordered float line, again with PyTorch's own BatchNorm deciding each probe; the rule is then
  checked at the bounds, their neighbours, ±0, ±inf and the extremes, and the BatchNorm is
  packed straight into bits (no float output) only if it holds.

What is left in PyTorch (the real first conv, the real classifier) runs as in the hard model,
so the packed model's logits equal the hard model's bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import _native

__all__ = ["build_plan", "fold_threshold", "fold_bounds", "Plan", "Unfusable"]

_INT32_MAX = np.iinfo(np.int32).max


def fold_threshold(alpha: torch.Tensor | None, bias: torch.Tensor | None, bn: nn.Module, n: int,
                   channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel ``(thr, flip)``, int32 ``[⌈channels/8⌉·8]``, with
    ``[BN(fl(fl(d·α) + b)) ≥ 0] = (d ≥ thr) ⊕ flip`` for every integer ``d`` in ``[−n, n]``, as
    PyTorch computes the left side; ``None`` when that is not a step function of ``d`` or two
    BatchNorm kernels disagree. Padding channels get ``thr = 2³¹ − 1``, ``flip = 0`` (bit 0)."""
    if n >= 1 << 24:  # d must be exact in float32
        return None
    d = torch.arange(-n, n + 1, dtype=torch.float32)
    y = d.expand(channels, -1)
    if alpha is not None:
        y = y * alpha.detach().to(torch.float32).view(-1, 1)
    if bias is not None:
        y = y + bias.detach().to(torch.float32).view(-1, 1)
    y = y.contiguous()  # [C, L]
    L = y.shape[1]
    if isinstance(bn, nn.BatchNorm2d):
        layouts = (y.view(1, channels, 1, L), y.t().contiguous().view(L, channels, 1, 1))
    else:
        layouts = (y.view(1, channels, L), y.t().contiguous())
    with torch.no_grad():
        a, b = (bn(t) >= 0 for t in layouts)
    s = a.reshape(channels, L)
    if not torch.equal(s, b.reshape(L, channels).t()):
        return None
    step = s[:, 1:].to(torch.int8) - s[:, :-1].to(torch.int8)
    up, down = (step >= 0).all(1), (step <= 0).all(1)
    if not bool((up | down).all()):
        return None
    C8 = -(-channels // 8) * 8
    thr = np.full(C8, _INT32_MAX, np.int32)
    flip = np.zeros(C8, np.int32)
    for c in range(channels):
        row = s[c]
        if bool(up[c]):     # false … false true … true: the first true
            first = torch.nonzero(row)
            thr[c] = first[0, 0].item() - n if len(first) else _INT32_MAX
        else:               # true … true false … false: bit = not (d ≥ first false)
            thr[c] = torch.nonzero(~row)[0, 0].item() - n
            flip[c] = 1
    return thr, flip


class Unfusable(Exception):
    """An input the fused plan was not built for (the caller runs the model module by module)."""


def _decisions(bn: nn.Module, y: torch.Tensor) -> torch.Tensor | None:
    """``bn(y) >= 0`` for float32 ``y [C, L]`` (channel c of every column through ``bn``), in
    the two layouts that take PyTorch's two BatchNorm kernels; None if they disagree."""
    C, L = y.shape
    y = y.contiguous()
    if isinstance(bn, nn.BatchNorm2d):
        layouts = (y.view(1, C, 1, L), y.t().contiguous().view(L, C, 1, 1))
    else:
        layouts = (y.view(1, C, L), y.t().contiguous())
    with torch.no_grad():
        a, b = (bn(t) >= 0 for t in layouts)
    a = a.reshape(C, L)
    return a if torch.equal(a, b.reshape(L, C).t()) else None


def _key_to_float(k: torch.Tensor) -> torch.Tensor:
    """Inverse of the order-preserving map float32 bits → int (negative floats reversed)."""
    k = k.to(torch.int32)
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _float_to_key(f: torch.Tensor) -> torch.Tensor:
    b = f.to(torch.float32).contiguous().view(torch.int32)
    return (b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64)


def fold_bounds(bn: nn.Module, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel float32 ``(lo, hi)`` with ``[BN(y) ≥ 0] = (lo ≤ y ≤ hi)`` for every float32
    ``y`` (NaN: false), as PyTorch computes the left side; None if no such bounds reproduce it
    on the checked values (or the two BatchNorm kernels disagree)."""
    inf = torch.tensor(float("inf"))
    ends = _decisions(bn, torch.tensor([-inf, inf]).expand(channels, 2))
    if ends is None:
        return None
    lo = torch.full((channels,), float("nan"))
    hi = torch.full((channels,), float("nan"))
    up, down = ends[:, 1] & ~ends[:, 0], ends[:, 0] & ~ends[:, 1]
    # bisection over float keys: s(a) = False, s(b) = True (up) or the reverse (down)
    a = torch.full((channels,), int(_float_to_key(-inf)), dtype=torch.int64)
    b = torch.full((channels,), int(_float_to_key(inf)), dtype=torch.int64)
    while bool(((b - a) > 1).any()):
        mid = a + (b - a) // 2
        s = _decisions(bn, _key_to_float(mid).view(channels, 1))
        if s is None:
            return None
        right = s[:, 0] == up          # mid is on b's side
        b = torch.where(right, mid, b)
        a = torch.where(right, a, mid)
    lo = torch.where(up, _key_to_float(b), lo)
    hi = torch.where(up, inf, hi)
    lo = torch.where(down, -inf, lo)
    hi = torch.where(down, _key_to_float(a), hi)
    # neither end true: a constant decision on finite inputs (zero BatchNorm scale)
    flat = ~up & ~down
    zero = _decisions(bn, torch.zeros(channels, 1))
    if zero is None:
        return None
    big = torch.tensor(torch.finfo(torch.float32).max)
    lo = torch.where(flat & zero[:, 0], -big, lo)
    hi = torch.where(flat & zero[:, 0], big, hi)
    lo = torch.where(ends[:, 0] & ends[:, 1], -inf, lo)   # true at both ends: all but NaN
    hi = torch.where(ends[:, 0] & ends[:, 1], inf, hi)
    # check the rule where it could break: at and next to the bounds, ±0, the extremes
    probes = [lo, hi, torch.nextafter(lo, -inf), torch.nextafter(lo, inf),
              torch.nextafter(hi, -inf), torch.nextafter(hi, inf)]
    fixed = torch.tensor([-inf, inf, -big, big, 0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0,
                          float("nan")])
    y = torch.cat([torch.stack(probes, 1).nan_to_num(0.0), fixed.expand(channels, -1)], 1)
    s = _decisions(bn, y)
    if s is None or not torch.equal(s, (y >= lo.view(-1, 1)) & (y <= hi.view(-1, 1))):
        return None
    return lo.numpy().astype(np.float32), hi.numpy().astype(np.float32)


class _PackIn:
    """A BatchNorm whose output feeds only a binary layer's sign, done as bounds while packing
    the float input (see :func:`fold_bounds`)."""

    def __init__(self, bn: nn.Module, bounds: tuple[np.ndarray, np.ndarray], dim: int):
        self.bn, self.bounds, self.dim = bn, bounds, dim

    def __call__(self, x: torch.Tensor) -> _Bits:
        if x.dim() != self.dim:   # e.g. BatchNorm1d on [B, C, L]
            raise Unfusable(f"a BatchNorm folded for {self.dim}-d inputs got {x.dim()}-d")
        return _Bits(_native.pack_nchw(x, bounds=self.bounds), x.shape[1])


class _Bits:
    """Packed activations between fused stages: int64 ``[B, H, W, ⌈C/64⌉]`` words."""
    __slots__ = ("words", "channels")

    def __init__(self, words: torch.Tensor, channels: int):
        self.words, self.channels = words, channels


class _Stage:
    """One binary layer run by the C kernel: its input (float, or packed bits from the previous
    stage), an optional max-pool on the integers, and its output (float NCHW, or the next
    layer's packed sign bits through ``thr``/``flip``)."""

    def __init__(self, layer, pool: int, fold: tuple[np.ndarray, np.ndarray] | None,
                 flat_input: bool):
        from .deploy import PackedConv2d

        self.layer, self.pool, self.fold = layer, pool, fold
        self.is_conv = isinstance(layer, PackedConv2d)
        self.flat_input = flat_input   # bits of a [C, h, w] map flattened into a linear layer
        self.out_channels = layer.out_channels if self.is_conv else layer.out_features

    def _bound(self, conv: _native.BConv):
        """``conv`` with this stage's epilogue, bound once (rebound if the layer's α or bias
        tensors were replaced; a folded epilogue does not read them)."""
        layer = self.layer
        key = (conv,) if self.fold is not None else (conv, layer.alpha, layer.bias)
        cached = getattr(self, "_cache", None)
        if cached is None or len(cached[0]) != len(key) or any(
                a is not b for a, b in zip(cached[0], key)):
            if self.fold is not None:
                bound = conv.bind(mode=_native.MODE_BITS, pool=self.pool, thr=self.fold[0],
                                  flip=self.fold[1])
            else:
                bound = conv.bind(pool=self.pool, alpha=layer.alpha, bias=layer.bias)
            self._cache = cached = (key, bound)
        return cached[1]

    def __call__(self, x):
        layer = self.layer
        if self.is_conv:
            if not isinstance(x, _Bits) and x.dim() != 4:   # e.g. an unbatched [C, H, W]
                raise Unfusable(f"a convolution got a {x.dim()}-d input")
            bits = x.words if isinstance(x, _Bits) else layer.native_input(x)
            conv = layer.native_conv()
        elif isinstance(x, _Bits):
            B, h, w, cw = x.words.shape
            if x.channels * h * w != layer.in_features:
                raise ValueError(f"{layer.in_features} input features expected, got a packed "
                                 f"[{x.channels}, {h}, {w}] map")
            if self.flat_input:   # [B, h, w, Cw] → one row of h·w pixels, a 1×(h·w) kernel
                bits, conv = x.words.view(B, 1, h * w, cw), layer.native_conv(x.channels)
            else:
                bits, conv = x.words, layer.native_conv()
        else:
            lead = x.shape[:-1]
            bits, conv = _native.pack_nchw(x.reshape(-1, layer.in_features)), layer.native_conv()
        y = self._bound(conv)(bits)
        if self.fold is not None:
            return _Bits(y, self.out_channels)
        if self.is_conv:
            return y
        return y.view(*lead, -1) if not isinstance(x, _Bits) else y.view(len(y), -1)


class Plan:
    """The fused forward of a sequential model: a list of steps (modules or stages)."""

    def __init__(self, steps: list):
        self.steps = steps

    @property
    def stages(self) -> list[_Stage]:
        return [s for s in self.steps if isinstance(s, _Stage)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        if isinstance(x, _Bits):   # cannot happen for a plan build_plan made
            raise RuntimeError("a fused plan ended on packed bits")
        return x

    def describe(self) -> str:
        names = []
        for s in self.steps:
            if isinstance(s, _PackIn):
                names.append(f"{type(s.bn).__name__}→bits")
            elif isinstance(s, _Stage):
                kind = type(s.layer).__name__.removeprefix("Packed")
                extra = (f"+maxpool{s.pool}" if s.pool > 1 else "") + (
                    "+bn→bits" if s.fold is not None else "→float")
                names.append(kind + extra)
            else:
                names.append(type(s).__name__)
        return " | ".join(names)


def _binary(m) -> bool:
    from .deploy import PackedConv2d, PackedLinear

    if isinstance(m, PackedLinear):
        return m.binary_input
    return (isinstance(m, PackedConv2d) and m.binary_input and m.groups == 1)


def _pool_size(m: nn.Module) -> int | None:
    """The window of a non-overlapping square max-pool without padding (what the kernel fuses)."""
    if not isinstance(m, nn.MaxPool2d) or m.return_indices or m.ceil_mode:
        return None
    k, s = m.kernel_size, m.stride if m.stride is not None else m.kernel_size
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pair(k), pair(s), pair(m.padding), pair(m.dilation)
    if kh == kw == sh == sw and ph == pw == 0 and dh == dw == 1:
        return kh
    return None


def _foldable_bn(m: nn.Module, channels: int) -> bool:
    return (isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and not m.training
            and m.track_running_stats and m.running_mean is not None
            and m.num_features == channels)


def _accepts_bits(m) -> bool:
    """Can a layer take packed bits from the previous stage (no padding modes to emulate)?"""
    from .deploy import PackedConv2d

    return _binary(m) and (not isinstance(m, PackedConv2d) or m.padding_mode == "zeros")


def build_plan(module: nn.Module) -> Plan | None:
    """The fused plan of an ``nn.Sequential`` of packed layers and float modules, or None for
    other models (they run module by module, each binary layer still in C)."""
    if not isinstance(module, nn.Sequential):
        return None
    from .deploy import PackedConv2d

    mods = list(module)
    steps: list = []
    flat_next = False
    i = 0
    while i < len(mods):
        m = mods[i]
        if not _binary(m):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            bounds = None
            if nxt is not None and _accepts_bits(nxt) and isinstance(m, nn.BatchNorm2d if (
                    isinstance(nxt, PackedConv2d)) else nn.BatchNorm1d):
                channels = nxt.in_channels if isinstance(nxt, PackedConv2d) else nxt.in_features
                if _foldable_bn(m, channels):
                    bounds = fold_bounds(m, channels)
            steps.append(m if bounds is None else _PackIn(m, bounds, 4 if isinstance(
                nxt, PackedConv2d) else 2))
            i += 1
            continue
        is_conv = isinstance(m, PackedConv2d)
        channels = m.out_channels if is_conv else m.out_features
        monotone = m.alpha is None or bool((m.alpha >= 0).all())  # f(d) non-decreasing
        j, pool = i + 1, 1
        if is_conv and monotone and j < len(mods) and _pool_size(mods[j]):
            pool, j = _pool_size(mods[j]), j + 1
        fold, flatten, consumer = None, False, None
        if monotone and j < len(mods) and _foldable_bn(mods[j], channels):
            k = j + 1
            if k < len(mods) and isinstance(mods[k], nn.Flatten) and mods[k].start_dim == 1 \
                    and mods[k].end_dim == -1:
                flatten, k = True, k + 1
            consumer = mods[k] if k < len(mods) else None
            ok = consumer is not None and _accepts_bits(consumer)
            if ok and flatten:   # a linear layer over the flattened [C, h, w] bits
                ok = (not isinstance(consumer, PackedConv2d)
                      and consumer.in_features % channels == 0)
            elif ok:             # conv → BN → conv, linear → BN → linear
                ok = isinstance(consumer, PackedConv2d) == is_conv
            if ok:
                fold = fold_threshold(m.alpha, m.bias, mods[j], _n(m), channels)
        steps.append(_Stage(m, pool, fold, flat_next))
        if fold is not None:
            flat_next = flatten
            i = k                      # pool, BN (and Flatten) folded into this stage
        else:
            flat_next = False
            i = j                      # the pool is fused; BN and the rest run as usual
    return Plan(steps)


def _n(layer) -> int:
    """Number of ±1 products in one output of a binary layer."""
    from .deploy import PackedConv2d

    if isinstance(layer, PackedConv2d):
        kh, kw = layer.kernel_size
        return kh * kw * layer.in_channels
    return layer.in_features
