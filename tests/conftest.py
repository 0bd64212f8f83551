import os

import numpy as np
import pytest
import torch

# Two shared cores: intra-op threads beyond 2 only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
