"""Implicit Concept Bottleneck Models (ICBM) and their standard-head baselines.

    image ─ backbone ─▶ features ─ Linear + BN ─▶ z ∈ R^K ─ HTAF ─▶ c ∈ [0,1]^K ─ Linear ─▶ logits

The K units ``c`` are the *concepts*: smooth HTAF during training, exact steps 1[z ≥ 0] at
evaluation: ``htaf.set_mode(model, "hard")`` (or ``with htaf.using_mode(model, "hard"):``) switches
the concept layer, as for every binary network here (``model.eval()`` alone only changes BatchNorm).
No concept labels are used: the concepts are whatever binary code the head needs. Since the head is
linear, a concept's effect on the logits is its column of the head weight: flipping concept k in
hard mode moves the logits by exactly ±W[:, k] (:meth:`ICBM.intervene`).

The BatchNorm after the projection centres each unit's pre-activation, so no concept starts dead
or stuck on; at evaluation it is an affine map, so ``z`` stays a linear projection of the features.

Registered: ``icbm_cnn`` (digits/MNIST), ``icbm_resnet18`` (CIFAR-style ResNet-18), ``icbm_tv`` (any
torchvision backbone), and the baselines ``std_cnn``, ``std_resnet18`` (alias ``resnet18``),
``std_tv``: the same backbone with a linear head on the continuous features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .._checks import check_int, check_real
from ..nn import HTAF, using_mode
from .backbones import build_backbone
from .registry import register_model

__all__ = ["ICBM", "StandardClassifier"]

ConceptIndex = int | Sequence[int] | torch.Tensor | None


class ICBM(nn.Module):
    """Backbone → linear projection to K units (+BN) → HTAF concepts → linear head.

    Args:
        backbone: module mapping images ``[B, C, H, W]`` to features ``[B, feat_dim]``.
        feat_dim: width of the backbone's output.
        num_concepts: K, the number of binary concepts.
        num_classes: number of classes.
        alpha, beta, gamma: HTAF parameters of the concept layer (γ and β are usually annealed by
            the engine's ``anneal_gamma``/``anneal_beta`` options, which find this layer).
        sparsity: weight of the penalty ``sparsity · mean(c)`` returned by :meth:`extra_loss`,
            pushing towards few active concepts per image (0 disables it).
        probe_size: number of evaluation images whose hard codes are kept between epochs to measure
            the epoch-to-epoch flip rate in :meth:`epoch_metrics`.

    Attributes:
        last_concepts: concept activations ``[B, K]`` of the last forward (detached).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_concepts: int, num_classes: int, *,
                 alpha: float = 0.5, beta: float = 4.0, gamma: float = 1.0, sparsity: float = 0.0,
                 probe_size: int = 512):
        super().__init__()
        check_int("feat_dim", feat_dim, low=1)
        self.num_concepts = check_int("num_concepts", num_concepts, low=1)
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.sparsity = check_real("sparsity", sparsity, low=0.0, strict=False)
        self.probe_size = check_int("probe_size", probe_size, low=1)
        self.backbone = backbone
        self.project = nn.Linear(feat_dim, num_concepts)
        self.norm = nn.BatchNorm1d(num_concepts)
        self.act = HTAF(alpha, beta, gamma, mode="smooth")
        self.head = nn.Linear(num_concepts, num_classes)
        self.last_concepts: torch.Tensor | None = None
        self._penalty_source: torch.Tensor | None = None
        self._previous_probe: torch.Tensor | None = None

    # --- the forward path, piece by piece -------------------------------------------------
    def preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """z = BN(W_p · backbone(x) + b_p): ``[B, K]``; concept k is on iff z_k ≥ 0."""
        return self.norm(self.project(self.backbone(x)))

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """Concept activations ``[B, K]`` in the current mode (∈ {0, 1} in hard mode)."""
        return self.act(self.preactivations(x))

    def classify(self, c: torch.Tensor) -> torch.Tensor:
        """Logits from concept activations: ``head(c) = c · Wᵀ + b``."""
        return self.head(c)

    def forward(self, x: torch.Tensor, return_concepts: bool = False):
        c = self.act(self.preactivations(x))
        self.last_concepts = c.detach()
        if self.training and self.sparsity > 0:
            self._penalty_source = c
        logits = self.head(c)
        return (logits, c) if return_concepts else logits

    # --- engine hooks -----------------------------------------------------------------------
    def extra_loss(self) -> torch.Tensor:
        """``sparsity · mean concept activation`` of the last training batch (0 when disabled)."""
        source, self._penalty_source = self._penalty_source, None
        if source is None:
            return self.head.weight.new_zeros(())
        return self.sparsity * source.mean()

    @torch.no_grad()
    def epoch_metrics(self, batches: Iterable) -> dict[str, float]:
        """Concept metrics on ``batches`` of ``(x, y)`` (see :mod:`htaf.explain.metrics`), plus
        ``flip_rate_epoch``: share of the first ``probe_size`` images' concept bits that changed
        since the previous call."""
        from ..explain.metrics import collect, concept_metrics, flip_rate

        out = collect(self, batches)
        metrics = concept_metrics(out)
        probe = out.codes[: self.probe_size].to("cpu", torch.bool)
        prev = self._previous_probe
        if prev is not None and prev.shape == probe.shape:
            metrics["flip_rate_epoch"] = flip_rate(prev, probe)
        self._previous_probe = probe
        return metrics

    # --- interventions --------------------------------------------------------------------
    def _mask(self, index: ConceptIndex, like: torch.Tensor, name: str) -> torch.Tensor | None:
        if index is None:
            return None
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            if index.shape[-1] != self.num_concepts:
                raise ValueError(f"{name} mask must end in {self.num_concepts} concepts, "
                                 f"got shape {tuple(index.shape)}")
            return index.to(like.device).expand_as(like)
        idx = [index] if isinstance(index, int) else [int(i) for i in index]
        for i in idx:
            if not -self.num_concepts <= i < self.num_concepts:
                raise ValueError(f"{name}: concept {i} out of range [0, {self.num_concepts})")
        mask = torch.zeros(self.num_concepts, dtype=torch.bool, device=like.device)
        mask[idx] = True
        return mask.expand_as(like)

    def intervene(self, x: torch.Tensor, flip: ConceptIndex = None, set_on: ConceptIndex = None,
                  set_off: ConceptIndex = None, return_concepts: bool = False):
        """Logits after editing the concepts of ``x``: ``flip`` turns c into 1 − c, ``set_on`` into 1,
        ``set_off`` into 0 (applied in that order). Each is a concept index, a sequence of indices,
        or a boolean mask ``[K]`` / ``[B, K]``. In hard mode flipping concept k changes the logits
        by exactly +W[:, k] (0 → 1) or −W[:, k] (1 → 0).
        """
        c = self.concepts(x).clone()
        for index, name in ((flip, "flip"), (set_on, "set_on"), (set_off, "set_off")):
            mask = self._mask(index, c, name)
            if mask is None:
                continue
            value = 1 - c if name == "flip" else torch.full_like(c, float(name == "set_on"))
            c = torch.where(mask, value, c)
        logits = self.head(c)
        return (logits, c) if return_concepts else logits

    def hard_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean concept codes ``[B, K]`` (z ≥ 0) whatever the current mode."""
        with using_mode(self.act, "hard"):
            return self.concepts(x) > 0.5

    def extra_repr(self) -> str:
        return f"num_concepts={self.num_concepts}, sparsity={self.sparsity:g}"


class StandardClassifier(nn.Module):
    """The baseline: the same backbone with a linear head on its continuous features."""

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(check_int("feat_dim", feat_dim, low=1),
                              check_int("num_classes", num_classes, low=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _icbm(kind: str, *, in_channels: int, image_size: int, num_classes: int, num_concepts: int,
          width: int | None = None, arch: str | None = None, pretrained_weights: str | None = None,
          alpha: float = 0.5, beta: float = 4.0, gamma: float = 1.0, sparsity: float = 0.0,
          probe_size: int = 512) -> ICBM:
    backbone, feat_dim = build_backbone(kind, in_channels=in_channels, image_size=image_size,
                                        width=width, arch=arch, pretrained_weights=pretrained_weights)
    return ICBM(backbone, feat_dim, num_concepts, num_classes, alpha=alpha, beta=beta, gamma=gamma,
                sparsity=sparsity, probe_size=probe_size)


def _standard(kind: str, *, in_channels: int, image_size: int, num_classes: int,
              width: int | None = None, arch: str | None = None,
              pretrained_weights: str | None = None) -> StandardClassifier:
    backbone, feat_dim = build_backbone(kind, in_channels=in_channels, image_size=image_size,
                                        width=width, arch=arch, pretrained_weights=pretrained_weights)
    return StandardClassifier(backbone, feat_dim, num_classes)


@register_model("icbm_cnn", family="icbm")
def icbm_cnn(*, in_channels: int = 1, image_size: int = 8, num_classes: int = 10,
             num_concepts: int = 32, width: int = 32, **kw) -> ICBM:
    """ICBM on :class:`~htaf.models.backbones.SmallCNN` (feat_dim = 4·width); for digits/MNIST.
    Options: ``alpha``, ``beta``, ``gamma``, ``sparsity``, ``probe_size``."""
    return _icbm("cnn", in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                 num_concepts=num_concepts, width=width, **kw)


@register_model("icbm_resnet18", family="icbm")
def icbm_resnet18(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                  num_concepts: int = 64, width: int = 64, **kw) -> ICBM:
    """ICBM on a CIFAR-style ResNet-18 (3×3 stem, no max-pool; feat_dim = 8·width)."""
    return _icbm("resnet18", in_channels=in_channels, image_size=image_size,
                 num_classes=num_classes, num_concepts=num_concepts, width=width, **kw)


@register_model("icbm_tv", family="icbm")
def icbm_tv(*, in_channels: int = 3, image_size: int = 224, num_classes: int = 10,
            num_concepts: int = 64, arch: str = "resnet18", pretrained_weights: str | None = None,
            **kw) -> ICBM:
    """ICBM on any torchvision backbone ``arch``; ``pretrained_weights`` is a state-dict path or a
    torchvision weights name already in the local cache (nothing is downloaded)."""
    return _icbm("tv", in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                 num_concepts=num_concepts, arch=arch, pretrained_weights=pretrained_weights, **kw)


@register_model("std_cnn", family="icbm")
def std_cnn(*, in_channels: int = 1, image_size: int = 8, num_classes: int = 10,
            width: int = 32) -> StandardClassifier:
    """Baseline for ``icbm_cnn``: SmallCNN + linear head."""
    return _standard("cnn", in_channels=in_channels, image_size=image_size,
                     num_classes=num_classes, width=width)


@register_model("std_resnet18", family="icbm")
def std_resnet18(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 width: int = 64) -> StandardClassifier:
    """Baseline for ``icbm_resnet18``: CIFAR-style ResNet-18 + linear head."""
    return _standard("resnet18", in_channels=in_channels, image_size=image_size,
                     num_classes=num_classes, width=width)


register_model("resnet18", family="icbm")(std_resnet18)


@register_model("std_tv", family="icbm")
def std_tv(*, in_channels: int = 3, image_size: int = 224, num_classes: int = 10,
           arch: str = "resnet18", pretrained_weights: str | None = None) -> StandardClassifier:
    """Baseline for ``icbm_tv``: the torchvision backbone + linear head."""
    return _standard("tv", in_channels=in_channels, image_size=image_size,
                     num_classes=num_classes, arch=arch, pretrained_weights=pretrained_weights)
