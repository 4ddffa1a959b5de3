"""PEFT interop: softtok prompts to and from ``adapter_config.json`` + ``adapter_model.safetensors``.

* :func:`export_peft` writes a prompt-tuning prompt (or a prefix, folded) in PEFT's format,
  so ``peft.PeftModel.from_pretrained(model, out_dir)`` loads it and computes the same logits.
* :func:`load_peft_adapter` reads a PEFT ``PROMPT_TUNING`` or ``PREFIX_TUNING`` adapter into
  a softtok module with the same logits.

PEFT stores one tensor, ``prompt_embeddings``: ``[P, D]`` for prompt tuning, and for prefix
tuning the flattened per-token prefixes ``[P, L * 2 * H_kv * hd]`` (layer-major, key before
value, then heads), i.e. the prefix encoder's *output*, so a reparameterised prefix
exports as its folded prefixes. Instruction-aware prompts have no PEFT counterpart.

The two placements agree exactly on unpadded and right-padded rows; on left-padded
rows softtok places the virtual tokens after the padding (see :mod:`softtok.prompts.base`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from softtok.prompts._arch import ModelInfo
from softtok.prompts.base import SoftPrompt
from softtok.prompts.config import PrefixTuningConfig, PromptTuningConfig
from softtok.prompts.prefix import PrefixTuning
from softtok.prompts.tuning import PromptTuning

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
#: PEFT types softtok imports, and the softtok method of each.
PEFT_TYPES = {"PROMPT_TUNING": "prompt_tuning", "PREFIX_TUNING": "prefix_tuning"}
#: Names that denote the same base model (softtok's embedded name and its hub id).
BASE_ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "gemma3-270m": "gemma-3-270m"}


def _base_key(name: str) -> str:
    """Comparable form of a model name or path: last path component, lower case, embedded alias resolved."""
    key = Path(str(name).rstrip("/")).name.lower()
    return BASE_ALIASES.get(key, key)


def portable_name(info: ModelInfo) -> str:
    """The base-model name to record: the embedded model's name instead of its private cache path."""
    from softtok.models import EMBEDDED, cache_dir

    path = Path(info.name_or_path) if info.name_or_path else None
    if path is not None and path.parent == cache_dir() and path.name in EMBEDDED:
        return path.name
    return info.name_or_path


def export_peft(
    prompt: SoftPrompt,
    out_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``prompt`` as a PEFT adapter folder.

    Args:
        prompt: A :class:`PromptTuning` or :class:`PrefixTuning` (reparameterised prefixes are folded).
        out_dir: Target folder; created if missing.
        base_model_name_or_path: Recorded in ``adapter_config.json``; default: the model the
            prompt was built for (the embedded model by its softtok name).
        overwrite: Replace the adapter files of an existing non-empty folder. Without it such a
            folder is an error and nothing is written.

    Returns:
        The folder.

    Raises:
        ValueError: A method PEFT cannot represent (instruction-aware prompts).
        FileExistsError: ``out_dir`` is a non-empty folder and ``overwrite`` is false.
    """
    from peft import PrefixTuningConfig as PeftPrefixConfig
    from peft import PromptTuningConfig as PeftPromptConfig

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists and is not an empty folder; pass overwrite=True to replace "
                              "its adapter files")
    info = prompt.info
    base = base_model_name_or_path if base_model_name_or_path is not None else portable_name(info)
    common = dict(task_type="CAUSAL_LM", num_virtual_tokens=prompt.n_virtual, num_transformer_submodules=1,
                  num_layers=info.num_layers, base_model_name_or_path=base or None, inference_mode=True)
    if isinstance(prompt, PromptTuning):
        config = PeftPromptConfig(**common, token_dim=info.hidden_size, num_attention_heads=info.num_attention_heads,
                                  prompt_tuning_init="RANDOM")
        weights = prompt.prompt_embeddings.detach()
    elif isinstance(prompt, PrefixTuning):
        kv = prompt.prefix_kv().detach()  # [L, 2, H, P, hd]
        token_dim = info.num_kv_heads * info.head_dim
        config = PeftPrefixConfig(**common, token_dim=token_dim, num_attention_heads=info.num_kv_heads,
                                  encoder_hidden_size=token_dim, prefix_projection=False)
        weights = kv.permute(3, 0, 1, 2, 4).reshape(prompt.n_virtual, -1)
    else:
        raise ValueError(f"method {prompt.method!r} has no PEFT equivalent; exportable: prompt_tuning, prefix_tuning")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config.save_pretrained(str(tmp))
        save_file({"prompt_embeddings": weights.float().contiguous().cpu()}, str(tmp / WEIGHTS_NAME))
        out.mkdir(exist_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME):  # replace only our two files, never the whole folder
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_peft_adapter(path: str | os.PathLike) -> tuple[dict, torch.Tensor]:
    """``(adapter_config, prompt_embeddings)`` of a PEFT adapter folder.

    Raises:
        FileNotFoundError: No ``adapter_config.json`` or no weights file.
        ValueError: The config is not a JSON object; the weights hold no ``prompt_embeddings``
            (not a prompt-learning adapter), or non-finite or non-float ones.
    """
    folder = Path(path)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(folder)!r}: not a PEFT adapter folder")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(config_file)!r} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(config_file)!r} holds a {type(config).__name__}, not a JSON object of settings")
    if (folder / WEIGHTS_NAME).is_file():
        state = load_file(str(folder / WEIGHTS_NAME))
    elif (folder / LEGACY_WEIGHTS_NAME).is_file():
        state = torch.load(folder / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME} in {str(folder)!r}")
    if "prompt_embeddings" not in state:
        raise ValueError(f"{str(folder)!r} holds no 'prompt_embeddings' (keys: {sorted(state)[:5]}...): "
                         "not a prompt-learning adapter")
    weights = state["prompt_embeddings"]
    if not torch.is_floating_point(weights) or not torch.isfinite(weights).all():
        bad = "not floating point" if not torch.is_floating_point(weights) else \
            f"{int((~torch.isfinite(weights)).sum())} non-finite values (NaN/inf)"
        raise ValueError(f"{str(folder)!r}: prompt_embeddings has {bad}; a usable adapter has finite weights")
    return config, weights


def _config_int(config: dict, key: str, where: str) -> int:
    """A positive integer entry of ``adapter_config.json``."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {CONFIG_NAME} has {key}={value!r}; it must be an integer >= 1")
    return value


def _check_weights(where: str, weights: torch.Tensor, rows: int, width: int, width_name: str) -> None:
    """``prompt_embeddings`` must be ``[num_virtual_tokens, width]``: say which side disagrees."""
    if weights.ndim != 2:
        raise ValueError(f"{where}: prompt_embeddings has shape {tuple(weights.shape)}; it must be 2-D "
                         f"[num_virtual_tokens={rows}, {width_name}={width}]")
    if weights.shape[0] != rows:
        raise ValueError(f"{where}: {CONFIG_NAME} says num_virtual_tokens={rows} but prompt_embeddings has "
                         f"{weights.shape[0]} rows (shape {tuple(weights.shape)}): the config and the weights "
                         "come from different adapters, or one was edited")
    if weights.shape[1] != width:
        raise ValueError(f"{where}: {CONFIG_NAME} implies {width_name}={width} but prompt_embeddings is "
                         f"{weights.shape[1]} wide (shape {tuple(weights.shape)})")


def load_peft_adapter(
    path: str | os.PathLike, model: PreTrainedModel, check_base_model: bool = True
) -> PromptTuning | PrefixTuning:
    """Import a PEFT prompt-tuning or prefix-tuning adapter for ``model``.

    Args:
        path: Adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        model: The base model to use it with.
        check_base_model: Refuse an adapter whose recorded ``base_model_name_or_path`` names
            another model (compared by last path component; the embedded ``smollm2-135m`` and
            ``SmolLM2-135M-Instruct`` count as the same).

    Returns:
        A softtok prompt on the same device as the model's embeddings.

    Raises:
        ValueError: Unsupported PEFT type or task; a config entry that is missing or not a positive
            integer; weights whose rows or width disagree with the config (the message names
            which); or a hidden size / layer count / KV shape / base model that does not match
            ``model``.
    """
    config, weights = read_peft_adapter(path)
    where = str(path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in PEFT_TYPES:
        raise ValueError(f"{where}: peft_type={config.get('peft_type')!r} is not supported; "
                         f"allowed: {', '.join(PEFT_TYPES)}")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise ValueError(f"{where}: task_type={config['task_type']!r}; softtok imports CAUSAL_LM adapters only")
    if config.get("num_transformer_submodules") is not None and _config_int(
            config, "num_transformer_submodules", where) != 1:
        raise ValueError(f"{where}: num_transformer_submodules={config['num_transformer_submodules']} "
                         "(encoder-decoder adapter); softtok supports decoder-only models")
    info = ModelInfo.from_model(model)
    base = config.get("base_model_name_or_path")
    if check_base_model and base and info.name_or_path and _base_key(base) != _base_key(info.name_or_path):
        raise ValueError(f"{where}: adapter was trained on base model {base!r} but the model is "
                         f"{info.name_or_path!r}; pass check_base_model=False if they are the same weights")
    n = _config_int(config, "num_virtual_tokens", where)
    device = model.get_input_embeddings().weight.device
    if peft_type == "PROMPT_TUNING":
        token_dim = _config_int(config, "token_dim", where) if config.get("token_dim") is not None \
            else int(weights.shape[-1])
        _check_weights(where, weights, n, token_dim, "token_dim")
        if token_dim != info.hidden_size:
            raise ValueError(f"{where}: adapter hidden size token_dim={token_dim} does not match the model's "
                             f"hidden size {info.hidden_size}: the adapter was trained on another model")
        return PromptTuning(PromptTuningConfig(n_virtual=n, init="random"), info, embeddings=weights.to(device))
    layers, heads, token_dim = (_config_int(config, key, where) for key in
                                ("num_layers", "num_attention_heads", "token_dim"))
    expected = (info.num_layers, info.num_kv_heads, info.num_kv_heads * info.head_dim)
    if (layers, heads, token_dim) != expected:
        raise ValueError(f"{where}: adapter prefix shape (num_layers={layers}, num_attention_heads={heads}, "
                         f"token_dim={token_dim}) does not match the model's (layers, KV heads, KV width) = {expected}")
    _check_weights(where, weights, n, layers * 2 * token_dim, "num_layers * 2 * token_dim")
    prefix = weights.float().view(n, layers, 2, heads, info.head_dim).permute(1, 2, 3, 0, 4)
    return PrefixTuning(PrefixTuningConfig(n_virtual=n, init="random"), info, prefix=prefix.to(device))
