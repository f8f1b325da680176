r"""Deployment of binary networks: a packed-bit inference model and ONNX export.

:func:`pack_model` turns a trained BNN (any model with :class:`~htaf.nn.BinaryLinear` /
:class:`~htaf.nn.BinaryConv2d` layers) into a :class:`PackedModel` whose binary layers compute

    dot(x_b, w_b) = n − 2·popcount(a ⊕ w) = 2·popcount(¬(a ⊕ w)) − n

on bit-packed words (bit 1 = +1, bit 0 = −1; 64 or 32 bits a word, int64/int32 tensors), exactly,
with integer ops only. Backends (``backend=``): ``"c"``, the kernel of :mod:`htaf._native`
(compiled once per machine; AVX2, ``popcnt`` or portable microkernels chosen at run time;
threads), the CPU default; ``"numpy"`` (``np.bitwise_count``), the fallback without a compiler;
``"torch"`` (SWAR bit trick, any device). True zero padding (``pad_value=0``) is corrected
exactly: a padded tap contributes −Σ_c w_b instead of 0, which an integer correction removes.

The integer result goes through ``· α + b`` in the same float order as the layer's own forward,
so the packed model's output equals the hard PyTorch model's bit for bit. Every other module
(BatchNorm, pooling, the full-precision first/last layers, real shortcuts, RPReLU…) is kept as
is, in eval mode; with the C backend a sequential model runs a fused plan (:mod:`htaf._fused`)
in which max-pooling and BatchNorm + sign become part of each binary layer's epilogue and
binary layers pass packed bits to each other, still bit for bit. Binary layers with a
real-valued input (``input_quantizer=None``) store their weights packed and unpack them once
per call; layers with real weights are kept.

File format (``.htafbin``): one ``torch.save`` of a dict of plain tensors and strings
(``format``, ``version``, ``word_bits``, ``arch`` = ``{"model": name, "model_kwargs": {...}}``,
``state_dict``), loadable with ``weights_only=True``; written atomically, with the mode a new
file gets (0666 minus the umask).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as TF

from . import _fused, _native
from ._checks import check_choice
from .nn.activation import set_mode
from .nn.binary import BinaryConv2d, BinaryLayer, BinaryLinear, binary_layers

__all__ = [
    "pack_bits", "unpack_bits", "popcount", "packed_mismatches", "PackedLinear", "PackedConv2d",
    "PackedModel", "pack_model", "hard_model", "export_onnx", "export_run", "verify",
    "training_steps", "eval_batches", "state_nbytes", "FORMAT", "BACKENDS",
]

FORMAT = "htaf-packed"
VERSION = 1
_WORD_DTYPE = {64: torch.int64, 32: torch.int32}
# SWAR popcount constants (all < 2^(bits−1), so they fit the signed dtype).
_SWAR = {
    64: (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101, 56),
    32: (0x55555555, 0x33333333, 0x0F0F0F0F, 0x01010101, 24),
}
_CHUNK_ELEMENTS = 1 << 16  # elements of the [words, rows, out] XOR block of one chunk


# -- bits ------------------------------------------------------------------------------------
def pack_bits(bits: torch.Tensor, word_bits: int = 64) -> torch.Tensor:
    """Pack a bool tensor along its last dim into int64 (or int32) words, little-endian bit order
    (element i of a word is bit i); the last word is zero-filled. ``[..., n] → [..., ⌈n/wb⌉]``."""
    check_choice("word_bits", word_bits, (32, 64))
    n = bits.shape[-1]
    words = -(-n // word_bits)
    pad = words * word_bits - n
    if bits.device.type == "cpu":
        # np.packbits is several times faster on a contiguous array than on a strided view
        packed = np.packbits(bits.contiguous().numpy(), axis=-1, bitorder="little")  # uint8
        extra = words * word_bits // 8 - packed.shape[-1]
        if extra:
            packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, extra)])
        return torch.from_numpy(np.ascontiguousarray(packed)).view(_WORD_DTYPE[word_bits])
    b = bits.to(torch.uint8)
    if pad:
        b = TF.pad(b, (0, pad))
    b = b.reshape(*bits.shape[:-1], words * word_bits // 8, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    byte = (b * weights).sum(-1, dtype=torch.uint8)  # distinct powers of 2: the sum is the OR
    return byte.contiguous().view(_WORD_DTYPE[word_bits])


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[..., W]`` words → ``[..., n]`` bool."""
    b = words.contiguous().view(torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8, device=words.device)
    bits = (b.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :n].bool()


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64/int32 element (SWAR bit trick, integer ops only)."""
    bits = {torch.int64: 64, torch.int32: 32}.get(x.dtype)
    if bits is None:
        raise TypeError(f"popcount needs an int64 or int32 tensor, got {x.dtype}")
    m1, m2, m4, h01, shift = _SWAR[bits]
    x = x - ((x >> 1) & m1)
    x = (x & m2) + ((x >> 2) & m2)
    x = (x + (x >> 4)) & m4
    return (x * h01) >> shift


_HAS_NP_POPCOUNT = hasattr(np, "bitwise_count")
_UNSIGNED = {torch.int64: np.uint64, torch.int32: np.uint32}
BACKENDS = ("auto", "c", "numpy", "torch")


def _resolve_backend(backend: str, device: torch.device) -> str:
    check_choice("backend", backend, BACKENDS)
    if backend in ("c", "numpy") and device.type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU, got tensors on {device}; "
                         "use backend 'torch' or 'auto'")
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    if _native.available():
        return "c"
    return "numpy" if _HAS_NP_POPCOUNT else "torch"


def packed_mismatches(a: torch.Tensor, w: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """popcount(a ⊕ w) summed over words: ``a [M, W]``, ``w [O, W]`` → int32 ``[M, O]``.

    ``backend``: ``"c"`` (a fused XOR-popcount loop in C, see :mod:`htaf._native`; CPU),
    ``"numpy"`` (hardware popcount via ``np.bitwise_count``, CPU), ``"torch"`` (SWAR popcount on
    tensors, any device), ``"auto"`` (on the CPU the first of c, numpy, torch that works; torch
    elsewhere). All give the same integers. (Convolutions and linear layers use the C
    kernel's own convolution; this is the general path, e.g. for grouped convolutions.)

    The NumPy path puts the words axis first so the sum over it adds contiguous ``[rows, O]``
    planes, and processes rows in chunks whose ``[W, rows, O]`` XOR block stays in cache.
    """
    backend = _resolve_backend(backend, a.device)
    M, W = a.shape
    O = w.shape[0]
    if backend == "c":
        return torch.from_numpy(_native.xor_popcount(a.numpy(), w.numpy()))
    rows = max(1, _CHUNK_ELEMENTS // max(1, O * W))
    aT, wT = a.t().contiguous(), w.t().contiguous()
    if backend == "numpy":
        an, wn = aT.numpy().view(_UNSIGNED[a.dtype]), wT.numpy().view(_UNSIGNED[w.dtype])
        # counts are ≤ word bits a word: their sum fits uint16 (a faster reduction) up to 2^16 − 1
        acc = np.uint16 if W * an.dtype.itemsize * 8 < 1 << 16 else np.int32
        out = np.empty((M, O), np.int32)
        xor = np.empty((W, min(rows, M), O), an.dtype)
        cnt = np.empty(xor.shape, np.uint8)
        for s in range(0, M, rows):
            m = min(M, s + rows) - s
            np.bitwise_xor(an[:, s:s + m, None], wn[:, None, :], out=xor[:, :m])
            np.bitwise_count(xor[:, :m], out=cnt[:, :m])
            out[s:s + m] = cnt[:, :m].sum(0, dtype=acc)
        return torch.from_numpy(out)
    out = torch.empty(M, O, dtype=torch.int32, device=a.device)
    for s in range(0, M, rows):
        blk = aT[:, s:s + rows]
        out[s:s + rows] = popcount(blk.unsqueeze(2) ^ wT.unsqueeze(1)).sum(0, dtype=torch.int32)
    return out


# -- packed layers -----------------------------------------------------------------------------
def _finish(y: torch.Tensor, alpha, bias, channel_dim: int) -> torch.Tensor:
    shape = [1] * y.dim()
    shape[channel_dim] = -1
    if alpha is not None:
        y = y * alpha.to(y.dtype).view(shape)
    if bias is not None:
        y = y + bias.to(y.dtype).view(shape)
    return y


def _float_epilogue(layer, conv: _native.BConv):
    """``conv`` bound to write ``dot · α + b`` with ``layer``'s α and bias (cached on the layer,
    rebound when those tensors are replaced)."""
    key = (conv, layer.alpha, layer.bias)
    cached = layer.__dict__.get("_bound_float")
    if cached is None or any(a is not b for a, b in zip(cached[0], key)):
        cached = (key, conv.bind(alpha=layer.alpha, bias=layer.bias))
        layer.__dict__["_bound_float"] = cached
    return cached[1]


class _PackedBase(nn.Module):
    def _store(self, layer: BinaryLayer, weight_bits: torch.Tensor) -> None:
        self.binary_input = layer.binary_input
        self.register_buffer("weight_bits", weight_bits)
        alpha = layer.weight_scale()
        self.register_buffer("alpha", None if alpha is None else alpha.clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def extra_repr(self) -> str:
        return (f"binary_input={self.binary_input}, word_bits={self.word_bits}, "
                f"scaled={self.alpha is not None}, bias={self.bias is not None}")


class PackedLinear(_PackedBase):
    """The packed twin of a :class:`~htaf.nn.BinaryLinear` (hard mode)."""

    def __init__(self, layer: BinaryLinear, word_bits: int = 64, backend: str = "auto"):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.word_bits, self.backend = word_bits, backend
        self._store(layer, pack_bits(layer.weight.detach() >= 0, word_bits))
        self._native_cache: dict = {}

    def signed_weight(self, dtype) -> torch.Tensor:
        return unpack_bits(self.weight_bits, self.in_features).to(dtype) * 2 - 1

    def native_conv(self, channels: int | None = None) -> _native.BConv:
        """The C kernel's weights (built once): a 1×1 convolution over ``in_features`` channels,
        or, for the packed output of a ``[channels, h, w]`` map flattened into this layer, a
        1×(h·w) convolution over ``channels`` with the weights reordered to ``(h, w, c)``."""
        key = channels or self.in_features
        conv = self._native_cache.get(key)
        if conv is None:
            bits = unpack_bits(self.weight_bits, self.in_features)  # [O, in], (c, h, w) order
            O, hw = self.out_features, self.in_features // key
            conv = _native.BConv(bits.view(O, key, hw).transpose(1, 2).reshape(O, 1, hw, key))
            self._native_cache[key] = conv
        return conv

    def _load_from_state_dict(self, *args, **kwargs):
        self._native_cache = {}
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binary_input:
            return _finish(TF.linear(x, self.signed_weight(x.dtype)), self.alpha, self.bias, -1)
        lead = x.shape[:-1]
        if _resolve_backend(self.backend, x.device) == "c" and x.dtype == torch.float32:
            bits = _native.pack_nchw(x.reshape(-1, self.in_features))  # [N, 1, 1, Cw]
            y = _float_epilogue(self, self.native_conv())(bits)       # [N, O, 1, 1]
            return y.reshape(*lead, self.out_features)
        a = pack_bits(x.reshape(-1, self.in_features) >= 0, self.word_bits)
        mism = packed_mismatches(a, self.weight_bits, self.backend)  # a fresh tensor
        dot = mism.mul_(-2).add_(self.in_features)
        y = dot.to(x.dtype).reshape(*lead, self.out_features)
        return _finish(y, self.alpha, self.bias, -1)


class PackedConv2d(_PackedBase):
    """The packed twin of a :class:`~htaf.nn.BinaryConv2d` (hard mode): channels packed per
    pixel, im2col on the words, packed matmul; zero padding corrected exactly."""

    def __init__(self, layer: BinaryConv2d, word_bits: int = 64, backend: str = "auto"):
        super().__init__()
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "padding_mode", "pad_value"):
            setattr(self, name, getattr(layer, name))
        self.word_bits, self.backend = word_bits, backend
        w = layer.weight.detach()  # [O, C/g, kh, kw]
        O, g = w.shape[0], self.groups
        bits = pack_bits(w.permute(0, 2, 3, 1) >= 0, word_bits)  # [O, kh, kw, Wg]
        self._store(layer, bits.reshape(g, O // g, -1))
        self._correction_cache: dict = {}
        self._native: _native.BConv | None = None

    def native_ok(self, x: torch.Tensor) -> bool:
        """Whether the C kernel runs this layer for ``x`` (binary float32 input, no groups)."""
        return (self.binary_input and self.groups == 1 and x.dtype == torch.float32
                and x.dim() == 4 and _resolve_backend(self.backend, x.device) == "c")

    def native_conv(self) -> _native.BConv:
        """The C kernel's weights, built once. Padding modes other than zeros pad the float
        input before it is packed (:meth:`native_input`), so the kernel sees no padding."""
        if self._native is None:
            O, kh, kw = self.out_channels, *self.kernel_size
            bits = unpack_bits(self.weight_bits.reshape(O, kh, kw, -1), self.in_channels)
            zeros = self.padding_mode == "zeros"
            self._native = _native.BConv(bits, stride=self.stride, dilation=self.dilation,
                                         padding=self.padding if zeros else (0, 0),
                                         pad_value=self.pad_value if zeros else 0.0)
        return self._native

    def native_input(self, x: torch.Tensor) -> torch.Tensor:
        """sign(x) packed per pixel for :meth:`native_conv` (float32 NCHW → int64 NHWC words)."""
        ph, pw = self.padding
        if self.padding_mode != "zeros" and (ph or pw):
            x = TF.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
        return _native.pack_nchw(x)

    def _signed_weight(self, dtype) -> torch.Tensor:
        O, Cg = self.out_channels, self.in_channels // self.groups
        kh, kw = self.kernel_size
        bits = unpack_bits(self.weight_bits.reshape(O, kh, kw, -1), Cg)
        return (bits.to(dtype) * 2 - 1).permute(0, 3, 1, 2).contiguous()

    def _zero_pad(self) -> bool:
        return self.padding_mode == "zeros" and self.pad_value == 0 and any(self.padding)

    def _correction(self, hp: int, wp: int, device) -> torch.Tensor:
        """Integer correction for true zero padding, ``[Ho·Wo, O]``: padded taps were packed as −1
        (bit 0) and contributed −Σ_c w_b[o, c, tap]; the exact dot has 0 there."""
        key = (hp, wp, str(device))
        corr = self._correction_cache.get(key)
        if corr is None:
            ph, pw = self.padding
            mask = torch.ones(1, 1, hp, wp, dtype=torch.float64, device=device)
            mask[..., ph:hp - ph, pw:wp - pw] = 0
            wsum = self._signed_weight(torch.float64).sum(1, keepdim=True)  # [O, 1, kh, kw]
            c = TF.conv2d(mask, wsum, None, self.stride, 0, self.dilation)  # exact small ints
            corr = c[0].permute(1, 2, 0).reshape(-1, self.out_channels).round().to(torch.int32)
            self._correction_cache[key] = corr
        return corr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if not self.binary_input:
            if self.padding_mode != "zeros":
                x, padding = TF.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), 0
            else:
                padding = self.padding
            y = TF.conv2d(x, self._signed_weight(x.dtype), None, self.stride, padding,
                          self.dilation, self.groups)
            return _finish(y, self.alpha, self.bias, 1)
        if self.native_ok(x):
            # one C call packs sign(x), another convolves and writes dot · α + b as NCHW float32
            return _float_epilogue(self, self.native_conv())(self.native_input(x))
        bits = x >= 0  # [B, C, H, W]
        if ph or pw:
            if self.padding_mode != "zeros":
                bits = TF.pad(bits.to(x.dtype), (pw, pw, ph, ph), mode=self.padding_mode) > 0
            else:  # pad_value +1 → bit 1; −1 and true zero (corrected below) → bit 0
                bits = TF.pad(bits, (pw, pw, ph, ph), value=self.pad_value > 0)
        B, C, hp, wp = bits.shape
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        ho = (hp - dh * (kh - 1) - 1) // sh + 1
        wo = (wp - dw * (kw - 1) - 1) // sw + 1
        g, Cg, Og = self.groups, C // self.groups, self.out_channels // self.groups
        pix = bits.permute(0, 2, 3, 1).reshape(B, hp, wp, g, Cg)
        words = pack_bits(pix, self.word_bits)  # [B, hp, wp, g, Wg]
        taps = [words[:, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
                for i in range(kh) for j in range(kw)]
        patches = torch.stack(taps, dim=4)  # [B, ho, wo, g, kh·kw, Wg]
        n = Cg * kh * kw
        corr = self._correction(hp, wp, x.device) if self._zero_pad() else None  # [ho·wo, O]
        backend = _resolve_backend(self.backend, x.device)
        outs = []
        for gi in range(g):
            p = patches[:, :, :, gi].reshape(B * ho * wo, -1)
            mism = packed_mismatches(p, self.weight_bits[gi], backend)  # a fresh tensor
            outs.append(mism.mul_(-2).add_(n))  # n − 2·mismatches, in place
        dot = outs[0] if g == 1 else torch.cat(outs, dim=1)  # [B·ho·wo, O]
        if corr is not None:
            dot.view(B, ho * wo, -1).add_(corr)
        # NCHW-contiguous, like the float conv's output: later ops (BN, pooling, real convs)
        # pick their kernels, and so their float rounding, by memory format. One pass converts
        # and transposes.
        y = torch.empty(B, Og * g, ho, wo, dtype=x.dtype, device=x.device)
        y.copy_(dot.view(B, ho, wo, -1).permute(0, 3, 1, 2))
        return _finish(y, self.alpha, self.bias, 1)

    def _load_from_state_dict(self, *args, **kwargs):
        self._correction_cache, self._native = {}, None
        super()._load_from_state_dict(*args, **kwargs)


# -- the model -----------------------------------------------------------------------------------
def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def state_nbytes(module: nn.Module) -> int:
    """Bytes of every tensor in ``module.state_dict()`` (parameters and buffers)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _convert(model: nn.Module, word_bits: int, backend: str) -> int:
    """Replace, in place, every binary layer with binary weights by its packed twin; return how
    many were replaced."""
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, BinaryLayer) and child.binary_weight:
            cls = PackedConv2d if isinstance(child, BinaryConv2d) else PackedLinear
            setattr(model, name, cls(child, word_bits, backend))
            count += 1
        else:
            count += _convert(child, word_bits, backend)
    return count


class PackedModel(nn.Module):
    """A BNN for inference with bit-packed binary layers; ``forward(x)`` like the hard model.

    Build with :func:`pack_model`; ``save(path)`` / ``PackedModel.load(path)`` for one file.
    ``nbytes()`` is the size of what is stored (packed words, α, biases, BN, real layers).

    With the C backend on float32 CPU inputs, a sequential model runs a fused plan
    (:mod:`htaf._fused`): consecutive binary layers pass packed bits to each other, max-pooling
    and BatchNorm + sign folded into each layer's epilogue. The plan is built at the first such
    forward from the current BatchNorm statistics; :meth:`reset_plan` after changing them in
    place (``load_state_dict``, ``set_backend``, ``train``/``eval`` and ``.to`` reset it).
    """

    def __init__(self, module: nn.Module, *, word_bits: int = 64, arch: dict | None = None):
        super().__init__()
        self.module = module
        self.word_bits = word_bits
        self.arch = copy.deepcopy(arch)
        self.reset_plan()
        self.train(False)  # inference only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            plan = self.fused_plan(x)
            if plan is not None:
                try:
                    return plan(x)
                except _fused.Unfusable:   # e.g. an unbatched image: module by module
                    pass
            return self.module(x)

    def packed_layers(self) -> list[PackedLinear | PackedConv2d]:
        return [m for m in self.module.modules() if isinstance(m, (PackedLinear, PackedConv2d))]

    def fused_plan(self, x: torch.Tensor | None = None) -> _fused.Plan | None:
        """The fused plan used for inputs like ``x`` (float32 on the CPU), or None when the model
        runs module by module (another backend, dtype or device, or a non-sequential model)."""
        if x is not None and (x.dtype != torch.float32 or x.device.type != "cpu"):
            return None
        if self.training:
            return None
        if self._layers is None:
            self._layers = self.packed_layers()
        cpu = torch.device("cpu")
        if any(_resolve_backend(m.backend, cpu) != "c" for m in self._layers):
            return None
        if not self._plan_built:
            self._plan, self._plan_built = _fused.build_plan(self.module), True
        return self._plan

    def reset_plan(self) -> None:
        """Forget the fused plan (rebuilt at the next forward)."""
        self._plan, self._plan_built, self._layers = None, False, None

    def backend_info(self) -> str:
        """Which kernel runs the binary layers, for users: C (which microkernel, threads) or the
        NumPy/PyTorch fallback, and whether the fused plan is used."""
        backends = {_resolve_backend(m.backend, torch.device("cpu")) for m in self.packed_layers()}
        if backends != {"c"}:
            if "numpy" in backends and not _native.available():
                return _native.describe()
            return f"{'/'.join(sorted(backends))} backend (per layer, no fused plan)"
        plan = self.fused_plan()
        how = "fused plan: packed bits between binary layers" if plan is not None and any(
            s.fold is not None for s in plan.stages) else "per layer"
        return f"{_native.describe()}; {how}"

    def set_backend(self, backend: str) -> PackedModel:
        """``"auto"``, ``"c"``, ``"numpy"`` or ``"torch"`` popcount for every packed layer."""
        check_choice("backend", backend, BACKENDS)
        for m in self.packed_layers():
            m.backend = backend
        self.reset_plan()
        return self

    def train(self, mode: bool = True) -> PackedModel:
        self.reset_plan()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.reset_plan()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.reset_plan()
        super()._load_from_state_dict(*args, **kwargs)

    def nbytes(self) -> int:
        return state_nbytes(self.module)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one file atomically (temp file in the same folder, then rename)."""
        if self.arch is None:
            raise ValueError("this packed model has no architecture record; pass "
                             "arch={'model': name, 'model_kwargs': {...}} to pack_model to save it")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "version": VERSION, "word_bits": self.word_bits,
                   "arch": self.arch, "state_dict": self.module.state_dict()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            # mkstemp makes the file 0600; give it the mode open() would (0666 minus the umask)
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> PackedModel:
        """Rebuild the model named in the file's ``arch`` and load its packed state, on the
        device ``map_location`` (as for ``torch.load``) puts it."""
        from .models import create_model

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no packed model at {path}")
        payload = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not an htaf packed model (format {FORMAT!r})")
        if payload.get("version") != VERSION:
            raise ValueError(f"{path}: unsupported packed format version {payload.get('version')}")
        arch, word_bits = payload["arch"], payload["word_bits"]
        module = create_model(arch["model"], **arch.get("model_kwargs", {}))
        # on the device map_location put the tensors on (load_state_dict copies values only)
        device = next((t.device for t in payload["state_dict"].values()
                       if isinstance(t, torch.Tensor)), torch.device("cpu"))
        module.to(device).eval()
        set_mode(module, "hard")
        _convert(module, word_bits, "auto")
        module.load_state_dict(payload["state_dict"])
        for p in module.parameters():
            p.requires_grad_(False)
        return cls(module, word_bits=word_bits, arch=arch)


def pack_model(model: nn.Module, *, word_bits: int = 64, arch: dict | None = None,
               backend: str = "auto") -> PackedModel:
    """A packed copy of ``model`` in hard mode (``model`` itself is not changed).

    ``arch = {"model": name, "model_kwargs": {...}}`` (as in a run's config) lets the result be
    saved and rebuilt with :meth:`PackedModel.load`. Raises ``ValueError`` if ``model`` has no
    binary layer with binary weights (e.g. the ``activation="relu"`` ceiling).
    """
    check_choice("word_bits", word_bits, (32, 64))
    check_choice("backend", backend, BACKENDS)
    module = copy.deepcopy(model).cpu().eval()
    set_mode(module, "hard")
    for p in module.parameters():
        p.requires_grad_(False)
    if _convert(module, word_bits, backend) == 0:
        raise ValueError("model has no binary layers with binary weights to pack "
                         "(a full-precision model, e.g. the activation='relu' ceiling, "
                         "has nothing to export to packed bits)")
    return PackedModel(module, word_bits=word_bits, arch=arch)


def hard_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval and hard mode, on the CPU, without gradients."""
    m = copy.deepcopy(model).cpu().eval()
    set_mode(m, "hard")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, *,
                opset: int = 17, check: bool = True) -> dict:
    """Export any model in hard mode to ONNX, check it with ``onnx.checker`` and, if
    ``onnxruntime`` is installed, compare its output with PyTorch's.

    Binary activations export exactly: a BNN's sign as ``Where(x >= 0, 1, −1)``, a Heaviside
    step (DHN, ICBM concepts, spikes) as ``Where(IsNaN(x), x, Where(x >= 0, 1, 0))``; real and
    binary weights are constants. The comparison runs ONNX Runtime without graph
    optimizations (what the graph computes): its default optimizations fold BatchNorm and the
    α scale into conv weights, which rounds differently and can flip a sign whose input is
    exactly 0. Returns ``{"path", "onnxruntime": bool, "max_abs_diff", "argmax_equal"}``.
    """
    import warnings

    _register_onnx_symbolics(opset)
    m = _without_extra_state(hard_model(model))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example.detach().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        expected = m(example)
    info = {"path": str(path), "onnxruntime": False, "max_abs_diff": None, "argmax_equal": None}
    if check:
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))
        try:
            import onnxruntime as ort
        except ImportError:
            return info
        # op by op: ORT's graph optimizations fold BatchNorm and the α scale into the conv
        # weights, which rounds differently and can flip a sign whose input is exactly 0
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {"input": example.numpy()})[0])
        info.update(onnxruntime=True, max_abs_diff=float((got - expected).abs().max()),
                    argmax_equal=bool((got.argmax(-1) == expected.argmax(-1)).all()))
    return info


_ONNX_REGISTERED: set[int] = set()


def _register_onnx_symbolics(opset: int) -> None:
    """ONNX for the ``htaf::step`` custom op (the exact step/sign of hard mode)."""
    if opset in _ONNX_REGISTERED:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    def step(g, x, signed):
        signed = sh._parse_arg(signed, "b")
        const = lambda v: g.op("CastLike", g.op("Constant", value_t=torch.tensor(v)), x)
        on = g.op("GreaterOrEqual", x, const(0.0))
        y = g.op("Where", on, const(1.0), const(-1.0 if signed else 0.0))
        return g.op("Where", g.op("IsNaN", x), x, y)

    register_custom_op_symbolic("htaf::step", step, opset)
    _ONNX_REGISTERED.add(opset)


def _without_extra_state(model: nn.Module) -> nn.Module:
    """``model`` (a private copy) with its modules' ``get_extra_state`` hidden: the TorchScript
    exporter puts every state_dict entry through ``.detach()``, and extra state (an ICBM's
    annealed HTAF parameters, a dict) has none. The state only matters for reloading."""
    for m in model.modules():
        cls = type(m)
        if getattr(cls, "get_extra_state", nn.Module.get_extra_state) is not \
                nn.Module.get_extra_state:
            m.__class__ = type(cls.__name__, (cls,), {"get_extra_state":
                                                      nn.Module.get_extra_state})
    return model


# -- from a run folder (the `htaf export` command) ------------------------------------------------
_STEP_KEYS = ("step", "global_step", "steps", "epoch")


def training_steps(checkpoint: dict) -> int:
    """The training progress a checkpoint records: the largest of its ``step``/``global_step``/
    ``steps``/``epoch`` entries (0 if none). A checkpoint with 0 is *untrained*."""
    found = [int(checkpoint[k]) for k in _STEP_KEYS
             if isinstance(checkpoint.get(k), (int, float)) and not isinstance(checkpoint[k], bool)]
    return max(found, default=0)


def eval_batches(dataset, batch_size: int = 512, *, labels: bool = False):
    """The dataset's test images, normalized as the engine feeds them, NCHW-contiguous (with
    ``labels=True``, ``(images, labels)`` pairs)."""
    for x, y in dataset.batches("test", batch_size, shuffle=False, augment=False):
        yield (x.contiguous(), y) if labels else x.contiguous()


def verify(packed: PackedModel, model: nn.Module, batches) -> dict:
    """Compare the packed model with the hard PyTorch model on an iterable of input batches
    (or ``(inputs, labels)`` pairs): argmax agreement, the largest logit difference (0.0 when
    bit-exact) and, given labels, both models' accuracy."""
    hard = hard_model(model)
    agree, diff, n, right_hard, right_packed, labelled = 0, 0.0, 0, 0, 0, False
    with torch.no_grad():
        for batch in batches:
            x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
            a, b = hard(x), packed(x)
            n += len(x)
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            diff = max(diff, float((a - b).abs().max()) if len(a) else 0.0)
            if y is not None:
                labelled = True
                right_hard += int((a.argmax(-1) == y).sum())
                right_packed += int((b.argmax(-1) == y).sum())
    report = {"n": n, "argmax_agree": agree, "max_abs_logit_diff": diff}
    if labelled:
        report.update(hard_accuracy=right_hard / max(1, n), packed_accuracy=right_packed / max(1, n))
    return report


def _nothing_to_pack(model: nn.Module) -> str:
    """Why ``model`` has nothing to pack, for the error message."""
    from .nn.activation import BinaryActivation

    if any(isinstance(m, BinaryActivation) for m in model.modules()):
        return ("this model has binary (0/1 or ±1) activations but real-valued weights (a DHN, "
                "an ICBM's concept layer, a spiking net): there are no binary weights to pack "
                "into bits, so the packed XNOR-popcount format does not apply. Export it with "
                "--onnx instead (the hard model, exact steps, real weights)")
    return ("model has no binary layers with binary weights to pack (a full-precision model, "
            "e.g. the activation='relu' ceiling); export it with --onnx instead")


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
               onnx: str | os.PathLike | None = None, word_bits: int = 64,
               check: bool = True) -> dict:
    """Pack a trained run's model to ``out`` (and/or export it to ONNX), verifying on the test set.

    The run is rebuilt with ``htaf.engine.load_run``. ``out`` needs a BNN (binary weights); ONNX
    works for any model (exported in hard mode). The report has ``backend`` (which kernel runs
    the packed model) and ``verify`` (argmax agreement, logit difference, test accuracy of the
    packed and the hard model). Raises ``FileNotFoundError`` for a missing run/checkpoint,
    ``ValueError`` for a checkpoint that records no training step (see
    :func:`training_steps`), for ``out`` on a model without binary weights (saying why), or if
    the packed predictions differ from the hard model's on the test set.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "config.json").is_file() or not ckpt_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (needs config.json and "
                                "checkpoints/last.pt)")
    if out is None and onnx is None:
        raise ValueError("nothing to do: give --out and/or --onnx")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if training_steps(ckpt) <= 0:
        raise ValueError(f"{ckpt_path} records no training step (step/epoch missing or 0): the "
                         "model is untrained; train it before exporting")
    from .engine import load_run

    model, dataset, config = load_run(run_dir)
    arch = {"model": config.model,
            "model_kwargs": {**dataset.model_kwargs(), **dict(config.model_kwargs)}}
    report: dict = {"run": str(run_dir), "model": arch["model"]}
    if out is not None:
        if not any(layer.binary_weight for _, layer in binary_layers(model)):
            raise ValueError(_nothing_to_pack(model))
        packed = pack_model(model, word_bits=word_bits, arch=arch)
        report["backend"] = packed.backend_info()
        if check:
            report["verify"] = v = verify(packed, model, eval_batches(dataset, labels=True))
            if v["argmax_agree"] != v["n"]:
                raise ValueError(f"packed model disagrees with the hard model on "
                                 f"{v['n'] - v['argmax_agree']} of {v['n']} test images")
        path = packed.save(out)
        report.update(out=str(path), packed_bytes=path.stat().st_size,
                      float_bytes=state_nbytes(model), packed_state_bytes=packed.nbytes())
    if onnx is not None:
        example = next(iter(eval_batches(dataset, 8)))
        report["onnx"] = export_onnx(model, onnx, example, check=check)
    return report
