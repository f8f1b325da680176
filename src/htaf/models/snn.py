r"""Spiking networks: a spiking MLP, a VGG-style spiking CNN and a SEW-ResNet, all multi-step.

Every model takes normalized images ``[B, C, H, W]`` and returns logits ``[B, classes]``: the input
is encoded into ``T`` time steps, every layer runs on ``[T, B, ...]`` (stateless layers — conv,
linear, batch norm — see ``[T·B, ...]``, as SpikingJelly's ``SeqToANNContainer``), neurons run
multi-step (the fused kernel on CUDA), and the logits are averaged over T. Each ``forward`` resets
the neurons: every call is an independent batch.

* ``encoding="direct"``: the analog image at every step; the first (stateless) layer is computed
  once and repeated, since its input does not change over time.
* ``encoding="rate"``: Bernoulli spikes with probability equal to the image rescaled per sample to
  [0, 1] (the models see normalized images, so min–max rescaling recovers intensities).

``activation`` picks the spike function through :func:`htaf.surrogates.resolve_activation`:
``"htaf_st"`` → HTAF's derivative, any registered surrogate name → that surrogate (the forward is
always the exact spike), ``"relu"`` → the ANN ceiling, ReLU in place of every neuron; smooth
``"htaf"`` is an error (a spike is an exact step). Its hyperparameters go in ``act_params``; the
neuron's options keep SpikingJelly's names (``tau``, ``v_threshold``...), so snnTorch's ``beta``
is not silently read as HTAF's β. ``neuron`` is ``"lif"`` (default), ``"if"`` or ``"plif"``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_int, check_real
from ..nn.spiking import BaseNode, IFNode, LIFNode, ParametricLIFNode, reset_net
from ..surrogates import resolve_activation
from .registry import register_model

__all__ = ["SeqToANN", "SpikingNet", "snn_mlp", "snn_sew_resnet", "snn_vgg"]

_NEURONS = {"lif": LIFNode, "if": IFNode, "plif": ParametricLIFNode}
_ENCODINGS = ("direct", "rate")


class SeqToANN(nn.Module):
    """Apply stateless layers to ``[T, B, ...]`` by folding time into the batch."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        y = self.body(x_seq.flatten(0, 1))
        return y.unflatten(0, x_seq.shape[:2])


class _NeuronFactory:
    """Builds the spiking nonlinearity (or ReLU for the ceiling) from the model's options."""

    def __init__(self, activation, act_params, neuron, tau, v_threshold, v_reset, decay_input,
                 detach_reset, backend):
        if act_params is not None and not isinstance(act_params, dict):
            raise ValueError(f"act_params must be a dict, got {act_params!r}")
        spec = resolve_activation(activation, act_params, family="snn")
        self.surrogate = spec.surrogate
        self.cls = _NEURONS[check_choice("neuron", neuron, tuple(_NEURONS))]
        self.kw = {"v_threshold": check_real("v_threshold", v_threshold), "v_reset": v_reset,
                   "detach_reset": detach_reset, "step_mode": "m", "backend": backend}
        if self.cls is not IFNode:
            self.kw["decay_input"] = decay_input
        self.tau = tau

    def __call__(self) -> nn.Module:
        if self.surrogate is None:
            return nn.ReLU()
        if self.cls is IFNode:
            return IFNode(surrogate=self.surrogate, **self.kw)
        return self.cls(self.tau, surrogate=self.surrogate, **self.kw)


class SpikingNet(nn.Module):
    """Encoder → ``stem`` (stateless, applied once for direct input) → ``body`` on ``[T, B, ...]``
    → ``head`` (stateless) → mean over T."""

    def __init__(self, stem: nn.Module, body: nn.Module, head: nn.Module, T: int, encoding: str):
        super().__init__()
        self.T = check_int("T", T, low=1)
        self.encoding = check_choice("encoding", encoding, _ENCODINGS)
        self.stem, self.body, self.head = stem, body, head

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` → the stem's output over time ``[T, B, ...]``."""
        if self.encoding == "direct":
            y = self.stem(x)
            return y.unsqueeze(0).expand(self.T, *y.shape)
        flat = x.flatten(1)
        lo = flat.min(1, keepdim=True).values
        hi = flat.max(1, keepdim=True).values
        p = ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)
        spikes = torch.bernoulli(p.unsqueeze(0).expand(self.T, *x.shape))
        return SeqToANN(self.stem)(spikes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reset_net(self)
        out = self.head(self.body(self.encode(x)))
        return out.mean(0)

    @torch.no_grad()
    def epoch_metrics(self, batches, max_batches: int = 8) -> dict[str, float]:
        """Engine hook: the mean firing rate of all spiking neurons (spikes per neuron per step)
        over up to ``max_batches`` test batches; ``{}`` for the ReLU ceiling."""
        neurons = [m for m in self.modules() if isinstance(m, BaseNode)]
        if not neurons:
            return {}
        count = [0.0, 0]

        def hook(_module, _inputs, out):
            count[0] += float(out.float().sum())
            count[1] += out.numel()

        handles = [m.register_forward_hook(hook) for m in neurons]
        try:
            for i, (x, _) in enumerate(batches):
                if i >= max_batches:
                    break
                self(x)
        finally:
            for h in handles:
                h.remove()
        return {"spike_rate": count[0] / max(count[1], 1)}

    def extra_repr(self) -> str:
        return f"T={self.T}, encoding={self.encoding!r}"


_NEURON_OPTIONS = {"neuron": "lif", "tau": 2.0, "v_threshold": 1.0, "v_reset": 0.0,
                   "decay_input": True, "detach_reset": False, "backend": "auto"}


def _common(kw: dict, model: str) -> tuple[_NeuronFactory, int, str]:
    """Pop the options every spiking model shares; anything left is an error naming it."""
    T = kw.pop("T", 4)
    encoding = kw.pop("encoding", "direct")
    activation = kw.pop("activation", "htaf_st")
    act_params = kw.pop("act_params", None)
    neuron = {k: kw.pop(k, default) for k, default in _NEURON_OPTIONS.items()}
    if kw:
        hint = ""
        if set(kw) & {"alpha", "beta", "gamma", "slope", "clip"}:
            hint = ("; a surrogate's hyperparameters go in act_params={...} (snnTorch's membrane "
                    "decay beta is tau = 1 / (1 − beta) here)")
        raise ValueError(f"{model} got unknown option(s): {', '.join(sorted(kw))}{hint}")
    return _NeuronFactory(activation, act_params, **neuron), T, encoding


@register_model("snn_mlp", family="snn")
def snn_mlp(*, in_channels: int = 1, image_size: int = 8, num_classes: int = 10,
            in_features: int | None = None, width: int = 256, depth: int = 2, **kw) -> SpikingNet:
    """Spiking MLP: [Linear → BatchNorm1d → neuron] × depth → Linear, logits averaged over T.

    Options: ``T=4``, ``encoding="direct"|"rate"``, ``activation`` (the spike function's
    surrogate, ``"htaf_st"`` by default, or ``"relu"`` for the ANN ceiling) and ``act_params`` (its
    hyperparameters, e.g. ``{"alpha": 2.0}``); the neuron under SpikingJelly's names: ``neuron=
    "lif"|"if"|"plif"``, ``tau``, ``v_threshold``, ``v_reset`` (None = soft reset),
    ``decay_input``, ``detach_reset``, ``backend``.
    """
    act, T, encoding = _common(kw, "snn_mlp")
    width = check_int("width", width, low=1)
    depth = check_int("depth", depth, low=1)
    n_in = in_features if in_features is not None else in_channels * image_size * image_size
    n_in = check_int("in_features", n_in, low=1)
    stem = nn.Sequential(nn.Flatten(), nn.Linear(n_in, width, bias=False), nn.BatchNorm1d(width))
    layers: list[nn.Module] = [act()]
    for _ in range(depth - 1):
        layers += [SeqToANN(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width)), act()]
    return SpikingNet(stem, nn.Sequential(*layers), SeqToANN(nn.Linear(width, num_classes)),
                      T, encoding)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]


@register_model("snn_vgg", family="snn")
def snn_vgg(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
            width: int = 64, depth: int = 6, **kw) -> SpikingNet:
    """VGG-style spiking CNN: ``depth`` (even) conv-BN-neuron blocks with widths
    w, w, 2w, 2w, 4w, 4w, … (max-pool after every second), global average pool, linear head.

    ``width=128, depth=6`` is the probe net of ``PROBES.md``. Options as :func:`snn_mlp`.
    """
    act, T, encoding = _common(kw, "snn_vgg")
    width = check_int("width", width, low=1)
    depth = check_int("depth", depth, low=2)
    if depth % 2:
        raise ValueError(f"depth must be even (conv layers come in pairs), got {depth}")
    widths = [width * 2 ** (i // 2) for i in range(depth)]
    stem = nn.Sequential(*_conv_bn(in_channels, widths[0]))
    layers: list[nn.Module] = [act()]
    size = image_size
    for i in range(1, depth):
        if i % 2 == 0 and size >= 2:
            layers.append(SeqToANN(nn.MaxPool2d(2)))
            size //= 2
        layers += [SeqToANN(*_conv_bn(widths[i - 1], widths[i])), act()]
    head = SeqToANN(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))
    return SpikingNet(stem, nn.Sequential(*layers), head, T, encoding)


@register_model("snn_csnn", family="snn")
def snn_csnn(*, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
             width: int = 32, hidden: int = 256, **kw) -> SpikingNet:
    """The convolutional spiking net of SpikingJelly's Fashion-MNIST tutorial (CSNN), sized by
    ``width``: conv(w)–BN–neuron–pool2, conv(2w)–BN–neuron–pool2, Linear(hidden)–BN–neuron,
    Linear(classes), logits averaged over T. (The tutorial's net has 128 channels in both convs.)
    Options as :func:`snn_mlp`."""
    act, T, encoding = _common(kw, "snn_csnn")
    width = check_int("width", width, low=1)
    hidden = check_int("hidden", hidden, low=1)
    size = check_int("image_size", image_size, low=4) // 4
    stem = nn.Sequential(*_conv_bn(in_channels, width))
    body = nn.Sequential(
        act(), SeqToANN(nn.MaxPool2d(2), *_conv_bn(width, 2 * width)), act(),
        SeqToANN(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * size * size, hidden,
                                                          bias=False), nn.BatchNorm1d(hidden)),
        act())
    return SpikingNet(stem, body, SeqToANN(nn.Linear(hidden, num_classes)), T, encoding)


class SEWBlock(nn.Module):
    """Spike-element-wise residual block (Fang et al., NeurIPS 2021), ADD connect function:
    out = SN(BN(conv(SN(BN(conv(s)))))) + shortcut(s), shortcut = conv-BN-SN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, act: _NeuronFactory):
        super().__init__()
        self.main = nn.Sequential(SeqToANN(*_conv_bn(cin, cout, stride)), act(),
                                  SeqToANN(*_conv_bn(cout, cout)), act())
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            SeqToANN(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)), act()))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.main(s) + self.shortcut(s)


@register_model("snn_sew_resnet", family="snn")
def snn_sew_resnet(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                   width: int = 64, depth: int = 1, **kw) -> SpikingNet:
    """SEW-ResNet for small images: conv-BN-neuron stem, three stages of ``depth`` SEW blocks
    (ADD) with widths w, 2w, 4w (stride 2 between stages), global average pool, linear head."""
    act, T, encoding = _common(kw, "snn_sew_resnet")
    width = check_int("width", width, low=1)
    depth = check_int("depth", depth, low=1)
    stem = nn.Sequential(*_conv_bn(in_channels, width))
    layers: list[nn.Module] = [act()]
    cin = width
    for stage in range(3):
        cout = width * 2 ** stage
        for j in range(depth):
            stride = 2 if stage > 0 and j == 0 and image_size >= 2 ** (stage + 1) else 1
            layers.append(SEWBlock(cin, cout, stride, act))
            cin = cout
    head = SeqToANN(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
    return SpikingNet(stem, nn.Sequential(*layers), head, T, encoding)


def spiking_neurons(model: nn.Module) -> list[BaseNode]:
    """The spiking neurons of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, BaseNode)]
