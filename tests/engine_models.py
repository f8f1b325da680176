"""Small test-only models registered for the engine tests (the real families live in
``htaf.models``). Imported by tests and by the torchrun worker script."""

from __future__ import annotations

import torch
from torch import nn

from htaf.models import list_models, register_model
from htaf.nn import create_act


class TinyMLP(nn.Sequential):
    """Flatten → [Linear → (BatchNorm) → activation] × depth → Linear."""

    def __init__(self, in_channels, image_size, num_classes, activation="htaf", depth=2, width=32,
                 norm=True):
        layers, d = [nn.Flatten()], in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(d, width), *([nn.BatchNorm1d(width)] if norm else []),
                       create_act(activation)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        super().__init__(*layers)


class ClippedLinear(nn.Linear):
    """A layer with a ``constrain_`` hook (latent weights clipped to [-c, c])."""

    clip = 0.05

    def constrain_(self):
        with torch.no_grad():
            self.weight.clamp_(-self.clip, self.clip)


class HookedMLP(TinyMLP):
    """TinyMLP with every optional engine hook: ``extra_loss``, ``epoch_metrics``,
    ``constrain_``."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        first = self[1]
        self[1] = ClippedLinear(first.in_features, first.out_features)
        self.extra_calls = 0
        self.metric_calls = 0

    def extra_loss(self):
        self.extra_calls += 1
        return 1e-4 * self[1].weight.square().sum()

    def epoch_metrics(self, batches):
        self.metric_calls += 1
        n = sum(int(y.numel()) for _, y in batches)
        return {"hook_samples": torch.tensor(float(n)),        # tensors become numbers
                "hook_training_flag": float(self.training)}


def register() -> None:
    if "test_mlp" not in list_models():
        register_model("test_mlp")(TinyMLP)
        register_model("test_hooked_mlp")(HookedMLP)


register()
