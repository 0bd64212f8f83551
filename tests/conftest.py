import numpy as np
import pytest
import torch

# Tests use small models, for which one intra-op thread is faster than two (10x measured on busy cores).
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
