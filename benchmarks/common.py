"""What several benchmarks share: the baseline surrogates, this CPU's name and the snnTorch LIF
row of the peer tables."""

from __future__ import annotations

import torch

from htaf._build import cpu_summary
from htaf.surrogates import list_surrogates

#: The peers' surrogates behind the same API (every registered one but HTAF): every benchmark's
#: baseline rows.
BASELINES = tuple(name for name in list_surrogates() if name != "htaf")


def cpu_name() -> str:
    """This CPU: model name, family/model numbers and SIMD level (``htaf._build.cpu_summary``),
    e.g. ``AMD EPYC (family 25, model 17, AVX-512)``; a VM's bare "AMD EPYC" can be a Zen 2, 3
    or 4, whose timings differ."""
    return cpu_summary()


def snntorch_rows(device="cpu") -> dict:
    """snnTorch 1.0 ``Leaky`` (β = 0.5, i.e. τ = 2; its default spike_grad, atan) run over the
    time steps of a ``[T, ...]`` input; or why it is missing."""
    try:
        import snntorch

        leaky = snntorch.Leaky(beta=0.5).to(device)

        def snn_step(x):
            mem = leaky.init_leaky()
            out = []
            for t in range(x.shape[0]):
                s, mem = leaky(x[t], mem)
                out.append(s)
            return torch.stack(out)

        return {"snnTorch Leaky (atan)": snn_step}
    except Exception as e:  # noqa: BLE001 - a missing peer is reported, not fatal
        return {"snnTorch": f"missing ({type(e).__name__}: {e})"}
