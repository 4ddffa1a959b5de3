import os
import sys

import pytest
import torch

# Tests never reach a model hub: everything is built in code or read from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

from tiny import ARCHS, tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def model(arch):
    return tiny_model(arch)
