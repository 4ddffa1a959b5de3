"""Prompt-only checkpoints: what :class:`~softtok.modules.soft_prompt.SoftPromptModule` saves, read back anywhere.

A Lightning checkpoint of a soft prompt holds the usual Lightning entries, a
``state_dict`` with the ``prompt.*`` weights only, and ``softtok_prompt``: the method,
its configuration and the base model's shapes. Everything is plain tensors and
builtins, so ``torch.load(..., weights_only=True)`` reads it, and a prompt can be
rebuilt (and exported) without loading the base model.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from softtok.prompts._arch import ModelInfo
from softtok.prompts.base import SoftPrompt
from softtok.prompts.config import PrefixTuningConfig, PromptConfig, config_from_dict

META_KEY = "softtok_prompt"
FORMAT_VERSION = 1
PREFIX = "prompt."


def checkpoint_meta(prompt: SoftPrompt, base_model: str) -> dict[str, Any]:
    """The ``softtok_prompt`` entry describing ``prompt``."""
    return {"format": FORMAT_VERSION, "method": prompt.method, "config": prompt.config.to_dict(),
            "model_info": prompt.info.to_dict(), "base_model": base_model}


def load_checkpoint(path_or_checkpoint: str | os.PathLike | dict) -> dict:
    """Read a checkpoint dict (``weights_only``) and check it is a softtok prompt checkpoint.

    Raises:
        FileNotFoundError: Missing file.
        ValueError: Not a softtok soft-prompt checkpoint.
    """
    if isinstance(path_or_checkpoint, dict):
        checkpoint = path_or_checkpoint
    else:
        if not os.path.isfile(path_or_checkpoint):
            raise FileNotFoundError(f"checkpoint not found: {str(path_or_checkpoint)!r}")
        checkpoint = torch.load(path_or_checkpoint, map_location="cpu", weights_only=True)
    if META_KEY not in checkpoint:
        raise ValueError(f"{str(path_or_checkpoint)[:200]!r} is not a softtok soft-prompt checkpoint "
                         f"(no {META_KEY!r} entry; keys: {sorted(checkpoint)[:8]})")
    return checkpoint


def check_method(checkpoint: dict, expected: PromptConfig | str, where: str = "checkpoint") -> None:
    """Raise ``ValueError`` if the checkpoint holds another method (or another configuration shape)."""
    meta = checkpoint[META_KEY]
    method = expected if isinstance(expected, str) else expected.method
    if meta["method"] != method:
        raise ValueError(f"{where} holds a {meta['method']!r} prompt but {method!r} was expected; "
                         "load it with the matching prompt config")
    if not isinstance(expected, str):
        theirs = config_from_dict(meta["config"])
        structural = ("n_virtual", "projection_hidden", "bottleneck", "deep", "share_generators", "activation")
        for key in structural:
            if getattr(theirs, key, None) != getattr(expected, key, None):
                raise ValueError(f"{where} has {key}={getattr(theirs, key, None)!r} but the config has "
                                 f"{key}={getattr(expected, key, None)!r}")


def prompt_from_checkpoint(path_or_checkpoint: str | os.PathLike | dict, method: str | None = None) -> SoftPrompt:
    """Rebuild the trained prompt of a checkpoint, without the base model.

    Args:
        path_or_checkpoint: ``.ckpt`` path or an already loaded checkpoint dict.
        method: If given, the method the checkpoint must hold.

    Returns:
        The prompt module (CPU, fp32), weights loaded strictly.
    """
    checkpoint = load_checkpoint(path_or_checkpoint)
    if method is not None:
        check_method(checkpoint, method)
    meta = checkpoint[META_KEY]
    config = config_from_dict(meta["config"])
    info = ModelInfo(**meta["model_info"])
    state = {k[len(PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)}
    prompt = build_empty(config, info, state)
    prompt.load_state_dict(state, strict=True)
    return prompt


def build_empty(config: PromptConfig, info: ModelInfo, state: dict[str, torch.Tensor]) -> SoftPrompt:
    """A prompt module of the right shapes for ``info`` (weights from ``state`` where the constructor needs them)."""
    from softtok.prompts.iapt import InstructionAwarePrompt
    from softtok.prompts.prefix import PrefixTuning
    from softtok.prompts.tuning import PromptTuning

    if config.method == "prompt_tuning":
        return PromptTuning(config, info, embeddings=state["prompt_embeddings"])
    if config.method == "prefix_tuning":
        assert isinstance(config, PrefixTuningConfig)
        if config.projection_hidden:
            return PrefixTuning(config, info)
        return PrefixTuning(config, info, prefix=state["prefix"])
    return InstructionAwarePrompt(config, info)
