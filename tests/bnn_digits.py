"""Shared by test_bnn.py and test_deploy.py: a binary MLP trained on sklearn's digits, once."""

from __future__ import annotations

import functools

import torch
from sklearn.datasets import load_digits

from htaf.models import create_model
from htaf.nn import apply_constraints


@functools.cache
def digits_split():
    """(x_train, y_train, x_test, y_test): 1437/360 split, standardized with the train statistics."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1437], perm[1437:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return x[tr], y[tr], x[te], y[te]


@functools.cache
def trained_digits_mlp(activation: str = "htaf_st", epochs: int = 10):
    """bnn_mlp (real first layer, binary hidden layer, real head) trained with Adam + one-cycle,
    latent weights clipped after every step by ``apply_constraints``. Returns (model, steps)."""
    torch.manual_seed(0)
    xtr, ytr, _, _ = digits_split()
    model = create_model("bnn_mlp", in_channels=1, image_size=8, num_classes=10,
                         activation=activation, hidden=(256, 256))
    batch = 64
    steps_per_epoch = -(-len(xtr) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(1)
    steps = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(order), batch):
            b = order[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            apply_constraints(model)
            steps += 1
    return model.eval(), steps
