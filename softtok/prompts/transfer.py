"""Prompt transfer (POST): carry a soft prompt tuned on a small model S to a large model L.

POST (Wang et al., ICML 2025, "Private Prompt Transfer", reference code ``sprintml/POST``):
the prompt owner tunes a prompt ``P_S`` on a small model S locally (private data never
leaves), then trains L's prompt ``P_L`` so that L-with-``P_L`` behaves like S-with-``P_S`` on a
small **public** dataset. With features ``f`` (next-token logits or the last hidden state)
at the chosen positions of a public sequence ``x``:

* ``variant="absolute"`` (``absolute_transfer``): match ``f_L(P_L, x)`` to ``f_S(P_S, x)``;
* ``variant="shift"`` (``absolute_shift_transfer``, ``output_shift``/``embedding_shift``): match
  the change the prompt makes, ``f_L(P_L, x) - f_L(x)`` to ``f_S(P_S, x) - f_S(x)``.

The distance is :func:`softtok.distill.kl_distillation` at ``T = 2`` (``loss="kl"``, POST's
``KLDiv``: ``T^2 * KL(softmax(source / T) || softmax(target / T))``, softmax over the last
axis even for hidden states and shifts, as in the reference) or
:func:`softtok.distill.mse_distillation` (``loss="mse"``). Defaults: ``kl`` on logits, which
is what POST's paper reports as its default transfer loss.

Where the reference scores one position (the ``[MASK]``/label token of a classification
task), softtok's ``positions`` chooses: ``"all"`` real tokens of the public sequence (the
default: a generation task's behaviour is spread over the whole answer), ``"answer"`` (the
labelled tokens) or ``"last"`` (the last real token, the reference's single position).

Checkpoint selection must not read private data: :func:`mean_transfer_loss` over a
held-out **public** split is the selection metric (the reference selects on the private
task's dev accuracy, which defeats the point of keeping the data private).

Both models must share a tokenizer (:func:`check_same_tokenizer`): the same public ids are
fed to both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.distill import kl_distillation, mse_distillation
from softtok.generation.prefill import positions_from_mask
from softtok.prompts._arch import ModelInfo, kept_logits
from softtok.prompts.base import Injected, SoftPrompt, answer_positions

LOSSES = ("kl", "mse")
FEATURES = ("logits", "hidden")
VARIANTS = ("absolute", "shift")
POSITIONS = ("all", "answer", "last")


def check_transfer_options(loss: str, temperature: float, variant: str, positions: str, features: str) -> None:
    """Raise ``ValueError`` naming the first option outside its allowed values."""
    for name, value, allowed in (("loss", loss, LOSSES), ("variant", variant, VARIANTS),
                                 ("positions", positions, POSITIONS), ("features", features, FEATURES)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: {', '.join(allowed)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")


def check_same_tokenizer(source: PreTrainedTokenizerBase, target: PreTrainedTokenizerBase) -> None:
    """Raise ``ValueError`` unless both tokenizers map every token string to the same id.

    Prompt transfer feeds the same public token ids to both models, so a shared tokenizer
    is required (POST transfers within one model family for this reason).
    """
    if source.get_vocab() == target.get_vocab():
        return
    names = (getattr(source, "name_or_path", "") or "source", getattr(target, "name_or_path", "") or "target")
    raise ValueError(
        f"prompt transfer needs one tokenizer, but the source model's ({names[0]!r}, {len(source)} tokens) and "
        f"the target model's ({names[1]!r}, {len(target)} tokens) map tokens to different ids; "
        "pick a small model of the target's family (or distil one: configs/soft_prompt/distil_small.yaml)"
    )


def load_prompt(path: str | os.PathLike, model: PreTrainedModel) -> SoftPrompt:
    """A trained prompt from a softtok checkpoint (``.ckpt``) or a PEFT adapter folder, checked against ``model``.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: Not a prompt checkpoint / adapter, or built for a model of other shapes
            (hidden size, layers, KV heads), named with both shapes.
    """
    from softtok.prompts.checkpoint import prompt_from_checkpoint
    from softtok.prompts.peft_io import load_peft_adapter

    path = Path(path)
    if path.is_dir():
        prompt = load_peft_adapter(path, model)
    elif path.is_file():
        try:
            prompt = prompt_from_checkpoint(path)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # a corrupt or foreign file: torch's unpickling errors
            raise ValueError(f"{str(path)!r} is not a readable softtok prompt checkpoint ({type(err).__name__}: "
                             f"{str(err)[:200]})") from None
    else:
        raise FileNotFoundError(f"no prompt at {str(path)!r} (expected a softtok .ckpt or a PEFT adapter folder)")
    prompt.info.check_compatible(ModelInfo.from_model(model), f"the prompt {str(path)!r}")
    return prompt.to(model.device)


def feature_mask(
    attention_mask: torch.Tensor, labels: torch.Tensor | None = None, positions: str = "all"
) -> torch.Tensor:
    """``[B, T]`` boolean mask of the positions whose features are matched.

    ``"all"``: every real token; ``"answer"``: tokens whose *next* token is labelled (the
    positions that predict the answer, as in the causal-LM loss); ``"last"``: each row's
    last real token.

    Raises:
        ValueError: ``positions="answer"`` without labels, or an unknown ``positions``.
    """
    real = attention_mask.bool()
    if positions == "all":
        return real
    if positions == "answer":
        if labels is None:
            raise ValueError("positions='answer' needs labels (public data with answers)")
        return answer_positions(labels)
    if positions == "last":
        index = torch.arange(real.shape[1], device=real.device)
        last = torch.where(real, index, -1).amax(-1)
        return index[None] == last[:, None]
    raise ValueError(f"positions={positions!r} is not allowed; allowed: {', '.join(POSITIONS)}")


def features(
    model: PreTrainedModel,
    prompt: SoftPrompt | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: torch.Tensor,
    kind: str = "logits",
) -> torch.Tensor:
    """``[N, F]`` features of ``model`` (with ``prompt``, or none) at the ``N`` kept text positions.

    Rows come in row-major order of ``keep`` whatever the prompt's layout, so two calls with
    the same ``keep`` line up row for row. ``kind="logits"``: next-token logits ``[N, V]``
    (only the kept rows are projected when the model takes ``logits_to_keep``);
    ``"hidden"``: the model's last ``hidden_states`` entry ``[N, D]``.
    """
    if prompt is None:
        embeds = model.get_input_embeddings()(input_ids)
        text_index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        injected = Injected(embeds, attention_mask, positions_from_mask(attention_mask), None, None, text_index)

        def forward(**kwargs):  # noqa: ANN202
            return model(inputs_embeds=injected.inputs_embeds, attention_mask=injected.attention_mask,
                         position_ids=injected.position_ids, **kwargs)
    else:
        injected = prompt.inject(model, input_ids, attention_mask)

        def forward(**kwargs):  # noqa: ANN202
            return prompt.model_forward(model, injected, **kwargs)
    width = injected.inputs_embeds.shape[1]
    kept = torch.zeros(keep.shape[0], width, dtype=torch.bool, device=keep.device).scatter(
        1, injected.text_index, keep)
    if kind == "hidden":
        return forward(output_hidden_states=True).hidden_states[-1][kept]
    return kept_logits(forward, model, kept)


def transfer_loss(
    target_model: PreTrainedModel,
    target_prompt: SoftPrompt,
    source_model: PreTrainedModel,
    source_prompt: SoftPrompt,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    loss: str = "kl",
    temperature: float = 2.0,
    variant: str = "absolute",
    positions: str = "all",
    features_kind: str = "logits",
) -> torch.Tensor:
    """POST's transfer loss on a public batch (gradients flow into ``target_prompt`` only).

    Args:
        target_model: L (frozen).
        target_prompt: ``P_L``, the prompt being trained.
        source_model: S (frozen; must share L's tokenizer).
        source_prompt: ``P_S``, the tuned source prompt (no gradient).
        input_ids: ``[B, T]`` public token ids (left- or right-padded).
        attention_mask: ``[B, T]``.
        labels: ``[B, T]`` (``-100`` = not an answer token); needed for ``positions="answer"``.
        loss: ``"kl"`` (:func:`~softtok.distill.kl_distillation` at ``temperature``) or ``"mse"``.
        temperature: KL temperature (2 in POST).
        variant: ``"absolute"`` or ``"shift"`` (see the module docstring).
        positions: ``"all"``, ``"answer"`` or ``"last"`` (see :func:`feature_mask`).
        features_kind: ``"logits"`` (next-token logits) or ``"hidden"`` (last hidden state).

    Returns:
        Scalar loss: nats times ``T^2`` for ``kl``; squared units of the features for ``mse``.

    Raises:
        ValueError: An option outside its allowed values, or models of different vocabulary
            sizes with ``features_kind="logits"``.
    """
    check_transfer_options(loss, temperature, variant, positions, features_kind)
    keep = feature_mask(attention_mask, labels, positions)
    if not bool(keep.any()):
        raise ValueError(f"positions={positions!r} selects no position of this batch (no real token, or no "
                         "labelled one): there is nothing to match")
    with torch.no_grad():
        source = features(source_model, source_prompt, input_ids, attention_mask, keep, features_kind)
        if variant == "shift":
            source = source - features(source_model, None, input_ids, attention_mask, keep, features_kind)
    target = features(target_model, target_prompt, input_ids, attention_mask, keep, features_kind)
    if variant == "shift":
        with torch.no_grad():
            target_base = features(target_model, None, input_ids, attention_mask, keep, features_kind)
        target = target - target_base
    if target.shape[-1] != source.shape[-1]:
        raise ValueError(f"source features have width {source.shape[-1]} but target features {target.shape[-1]}; "
                         f"features_kind={features_kind!r} needs models of the same "
                         f"{'vocabulary' if features_kind == 'logits' else 'hidden'} size")
    if loss == "kl":
        return kl_distillation(target, source.to(target.dtype), temperature)
    return mse_distillation(target, source.to(target.dtype))


@torch.no_grad()
def mean_transfer_loss(
    target_model: PreTrainedModel,
    target_prompt: SoftPrompt,
    source_model: PreTrainedModel,
    source_prompt: SoftPrompt,
    batches: Iterable[dict[str, torch.Tensor]],
    **options: object,
) -> float:
    """The checkpoint-selection metric: :func:`transfer_loss` over held-out **public** batches.

    Each batch is weighted by its number of matched positions, so the result is the mean over
    every position of the split, whatever the batch size. ``options`` are :func:`transfer_loss`'s
    keyword options. Never pass private task data here: selecting on it leaks the task.
    """
    total, count = 0.0, 0
    for batch in batches:
        value = transfer_loss(target_model, target_prompt, source_model, source_prompt, batch["input_ids"],
                              batch["attention_mask"], batch.get("labels"), **options)
        weight = int(feature_mask(batch["attention_mask"], batch.get("labels"),
                                  str(options.get("positions", "all"))).sum())
        total += value.item() * weight
        count += weight
    if count == 0:
        raise ValueError("mean_transfer_loss got no batches (the held-out public split is empty)")
    return total / count
