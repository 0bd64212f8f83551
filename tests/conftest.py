import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

# Tests use small models, for which one intra-op thread is faster than two (10x measured on busy cores).
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Same examples on every run and machine (seeded by the test), no example database across checkouts.
# `--hypothesis-profile=thorough` hunts with more examples; `--hypothesis-seed=N` explores others.
settings.register_profile("lpc", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", settings.get_profile("lpc"), max_examples=1000)
# `make mutation` (docs/MUTATION.md): a failing example is enough to kill a mutant, so no shrinking.
settings.register_profile("mutation", settings.get_profile("lpc"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("lpc")
