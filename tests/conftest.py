"""Test-session policy: one intra-op thread per process (so results do not depend on how many
pytest-xdist workers share the machine), a fixed seed before every test, and every piece of
global state a test may change restored after it."""

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_global_state():
    """Seed, then put back what a test changed: thread count, default dtype, grad mode, autocast
    and torch.compile's configuration and caches."""
    import torch._dynamo

    torch.manual_seed(0)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    dynamo_config = torch._dynamo.config.save_config()
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(True)
    assert not torch.is_autocast_enabled("cpu"), "a test left CPU autocast on"
    if torch._dynamo.config.save_config() != dynamo_config:
        torch._dynamo.config.load_config(dynamo_config)
        torch._dynamo.reset()
