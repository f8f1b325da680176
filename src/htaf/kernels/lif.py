r"""The fused multi-step LIF/IF neuron as ``torch.library`` ops with autograd.

The neuron (SpikingJelly's equations; ``k = 1/τ``, ``R = v_reset`` for a hard reset, 0 for a soft one)::

    charge   H[t] = V[t−1] + k·(X[t] − (V[t−1] − R))      LIF, decay_input=True
             H[t] = V[t−1] − k·(V[t−1] − R) + X[t]        LIF, decay_input=False
             H[t] = V[t−1] + X[t]                         IF
    fire     S[t] = 1[H[t] − V_th ≥ 0]                    backward: surrogate'(H[t] − V_th)
    reset    V[t] = H[t]·(1 − S[t]) + v_reset·S[t]        hard (v_reset is a number)
             V[t] = H[t] − V_th·S[t]                      soft (v_reset=None)

``detach_reset`` cuts the gradient of S through the reset. The PyTorch reference (autograd
through the time loop) is :meth:`htaf.nn.BaseNode.multi_step_forward`'s other path; the fused
implementations are registered per device (Triton on CUDA: :mod:`htaf.kernels.triton_lif`,
native code on the CPU). The forward saves only X (and the N initial potentials); the backward
recomputes H. Surrogates are selected by their ``kernel_id`` with their hyperparameters as 0-d
tensors, like the elementwise ops.
"""

from __future__ import annotations

import torch

__all__ = ["lif_multistep", "MAX_T_RECOMPUTE"]

#: Above this many steps the CUDA forward also stores H (fp32) for the backward.
MAX_T_RECOMPUTE = 16

_lib = torch.library.Library("htaf", "FRAGMENT")
_lib.define("lif_forward(Tensor x, Tensor v0, Tensor k, float v_threshold, float v_reset, "
            "bool hard, bool leaky, bool decay_input, bool detach_reset, int kind, "
            "Tensor[] params, float scale, bool store_h) -> (Tensor, Tensor, Tensor)")
_lib.define("lif_backward(Tensor gs, Tensor gv_last, Tensor x, Tensor h, Tensor v0, Tensor k, "
            "float v_threshold, float v_reset, bool hard, bool leaky, bool decay_input, "
            "bool detach_reset, int kind, Tensor[] params, float scale, bool need_gk) "
            "-> (Tensor, Tensor, Tensor)")


@torch.library.register_fake("htaf::lif_forward")
def _(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input, detach_reset, kind, params,
      scale, store_h):
    h = x.new_empty(tuple(x.shape) if store_h else (0,), dtype=torch.float32)
    return torch.empty_like(x), torch.empty_like(v0), h


@torch.library.register_fake("htaf::lif_backward")
def _(gs, gv_last, x, h, v0, k, v_threshold, v_reset, hard, leaky, decay_input, detach_reset,
      kind, params, scale, need_gk):
    return (torch.empty_like(gs, memory_format=torch.contiguous_format), torch.empty_like(v0),
            k.new_empty(1))


def _setup_context(ctx, inputs, output):
    (x, v0, k, v_th, v_reset, hard, leaky, decay_input, detach_reset, kind, params, scale,
     store_h) = inputs
    h = output[2]
    # Save the least: X (the layer's input, alive anyway) and N initial potentials; H is
    # recomputed in the backward. Long sequences on CUDA save H instead and drop X.
    ctx.save_for_backward(x.new_empty((0,)) if store_h else x, h, v0, k, *params)
    ctx.config = (v_th, v_reset, hard, leaky, decay_input, detach_reset, kind)
    ctx.scale = scale
    ctx.need_gk = k.requires_grad
    ctx.x_shape = x.shape


def _backward(ctx, gs, gv_last, _gh):
    x, h, v0, k, *params = ctx.saved_tensors
    if gs is None:
        gs = v0.new_zeros(ctx.x_shape)
    if gv_last is None:
        gv_last = torch.zeros_like(v0)
    gx, gv0, gk = torch.ops.htaf.lif_backward(gs, gv_last, x, h, v0, k, *ctx.config, params,
                                              ctx.scale, ctx.need_gk)
    # one entry per input of lif_forward: x, v0, k, 7 scalars, params (a list), scale, store_h
    return (gx, gv0, gk if ctx.need_gk else None, *[None] * 7, [None] * len(params), None, None)


torch.library.register_autograd("htaf::lif_forward", _backward, setup_context=_setup_context)


def lif_multistep(x_seq: torch.Tensor, v_init: torch.Tensor, k, *, v_threshold: float,
                  v_reset: float | None, decay_input: bool, detach_reset: bool, kind: int,
                  params: list[torch.Tensor], scale: float = 1.0, leaky: bool = True):
    """Multi-step LIF (``leaky=True``) or IF neuron over ``x_seq`` ``[T, ...]`` in the fused op.

    ``v_init`` has shape ``x_seq.shape[1:]``; ``k`` = 1/τ is a float or a one-element tensor (it
    may require grad: PLIF); ``kind``/``params`` are the surrogate's kernel id and
    hyperparameters (0-d tensors), ``scale`` its step convention's factor (½ for a sign-native
    surrogate, :meth:`~htaf.surrogates.Surrogate.grad_scale`).
    Returns ``(S [T, ...] in x's dtype, V after the last step)``.
    Call it only where :func:`htaf.kernels.fused` is true for ``x_seq``.
    """
    T = x_seq.shape[0]
    x2 = x_seq.reshape(T, -1).contiguous()
    v0 = v_init.to(x_seq.dtype).reshape(-1).contiguous()
    if v0.numel() != x2.shape[1]:
        raise ValueError(f"v_init has {v0.numel()} elements, expected {x2.shape[1]}")
    k_dtype = torch.float64 if x_seq.dtype == torch.float64 else torch.float32
    if isinstance(k, torch.Tensor):
        kt = k.to(device=x_seq.device, dtype=k_dtype).reshape(1)
    else:
        kt = torch.full((1,), float(k), device=x_seq.device, dtype=k_dtype)
    hard = v_reset is not None
    store_h = x_seq.is_cuda and T > MAX_T_RECOMPUTE
    s, v_last, _ = torch.ops.htaf.lif_forward(
        x2, v0, kt, float(v_threshold), float(v_reset) if hard else 0.0, hard, leaky,
        decay_input, detach_reset, int(kind), list(params), float(scale), store_h)
    return s.reshape(x_seq.shape), v_last.reshape(x_seq.shape[1:])
