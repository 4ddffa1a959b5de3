import json
import os
import sys

import pytest
import torch

# Tests never reach a model hub: everything is built in code or read from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

from tiny import ARCHS, QUESTIONS, tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def model(arch):
    return tiny_model(arch)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny llama and its tokenizer saved with ``save_pretrained``: a model folder for recipe tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture
def data_file(tmp_path):
    """:data:`tiny.QUESTIONS` as a JSONL problems file."""
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    return str(path)
