"""CompLLM's segment compressor: the same LLM with a LoRA reads a segment and writes concept embeddings.

CompLLM (Berton et al. 2025, "CompLLM: Compression for Long Context Q&A", arXiv 2509.19228)
splits a long context into segments of about 20 tokens and compresses each segment
**independently** into ``ratio`` times fewer *concept embeddings* (CEs), input embeddings
the frozen LLM then reads in place of the segment's tokens. The compressor is the same LLM
with a LoRA adapter plus a linear head; it is trained by distillation on the answer tokens
(:func:`softtok.compression.train.distillation_loss`). Because segments are independent,
their CEs can be cached and reused across queries (:class:`~softtok.compression.cache.SegmentCache`),
and the cost of compression grows linearly with the context.

The data flow of one segment of ``n <= segment_len`` token ids (``k = ceil(n / ratio)``)::

    ids       [t_0 .. t_{n-1}, eos x k]               positions 0 .. n+k-1 (every segment starts at 0)
    h         = LLM_LoRA(ids).last_hidden_state[n : n+k]   [k, D] (after the final norm)
    residual  r_j = mean(embed(t_{j*ratio}), .., embed(t_{min((j+1)*ratio, n) - 1}))   [k, D]
    CE_j      = r_j + head(h_j)        (residual="mean", softtok's default)
    CE_j      = head(h_j)              (residual="none", pure CompLLM)

softtok's parametrisation ``CE = mean + head(h)`` with a zero-initialised head
(``head_init="zero"``) makes the untrained compressor *mean pooling* of the token
embeddings, a Soft-Thinking-like concept token that already lives on the input-embedding
manifold. Training therefore starts from a meaningful compression instead of from the
LLM's final-layer states, which sit at a very different scale from input embeddings
(hidden states after the final norm have RMS near the norm's gain, token embeddings are
typically far smaller), and the LoRA learns only a correction. With ``ratio=1`` and a zero
head the CEs are exactly the context's token embeddings: the identity oracle of the tests.

The LoRA is injected into the caller's model object (``peft.inject_adapter_in_model``) but
is **disabled** except inside the compressor's own forward (:meth:`SegmentCompressor.adapter`),
so generation, teacher and student passes through the same model never see it. The
compressor does not own the base model: every call takes it as an argument, and the
module's parameters (and ``state_dict``) are the LoRA weights and the head only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from softtok.compression.config import CompressionConfig
from softtok.prompts._arch import ModelInfo

if TYPE_CHECKING:
    from softtok.compression.cache import SegmentCache
    from softtok.compression.prefill import CompressedContext

#: Adapter names are ``ADAPTER_PREFIX + "<n>"`` with ``n`` unique in the process, so several compressors can
#: share one model and a compressor never finds an adapter of its name in a model it was not built on.
ADAPTER_PREFIX = "softtok_compressor_"
_ADAPTER_IDS = itertools.count()
WEIGHTS_FILE = "compressor.safetensors"
CONFIG_FILE = "compressor_config.json"
FORMAT = "softtok-compressor"


def eos_token_id(model: PreTrainedModel) -> int:
    """The EOS id appended to segments: the generation config's (first) EOS, else the model config's.

    Raises:
        ValueError: The model defines no EOS token.
    """
    for source in (model.generation_config, model.config):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        if eos is not None:
            return int(eos)
    raise ValueError("the model defines no eos_token_id (generation_config or config); the compressor appends EOS "
                     "tokens to each segment and needs one")


def max_positions(model: PreTrainedModel) -> int | None:
    """The model's position limit (``max_position_embeddings``, GPT-2's ``n_positions``), or ``None``."""
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def split_segments(context_ids: Sequence[int], segment_len: int) -> list[list[int]]:
    """Cut ``context_ids`` into consecutive segments of ``segment_len`` (the last may be shorter)."""
    ids = [int(t) for t in context_ids]
    return [ids[i:i + segment_len] for i in range(0, len(ids), segment_len)]


def compressed_length(n_tokens: int, config: CompressionConfig) -> int:
    """How many concept embeddings ``n_tokens`` context tokens become: ``sum_s ceil(n_s / ratio)``."""
    full, rest = divmod(n_tokens, config.segment_len)
    return full * config.max_groups + math.ceil(rest / config.ratio)


class _LoraSlot(nn.Module):
    """One wrapped layer's adapter weights (shared with the model, registered here for saving/optimising)."""

    def __init__(self, layer: BaseTunerLayer, adapter: str) -> None:
        super().__init__()
        self.A = layer.lora_A[adapter]
        self.B = layer.lora_B[adapter]
        self.dropout = layer.lora_dropout[adapter]


class SegmentCompressor(nn.Module):
    """Compress context segments into concept embeddings with the base LLM + LoRA + a linear head.

    Building one injects a LoRA (named ``softtok_compressor_<n>``) into ``model`` in place
    and freezes the base model's parameters; the adapter stays disabled outside
    :meth:`adapter`. Only the LoRA and head parameters require grad.

    Args:
        config: Segment length, ratio, LoRA and head settings.
        model: The base causal LM the compressor is built on (and injected into).

    Raises:
        ValueError: The model has no EOS token or its shapes cannot be read.
    """

    def __init__(self, config: CompressionConfig, model: PreTrainedModel) -> None:
        super().__init__()
        if not isinstance(config, CompressionConfig):
            raise ValueError(f"config must be a CompressionConfig, got {type(config).__name__}")
        self.config = config
        self.info = ModelInfo.from_model(model)
        self.eos_id = eos_token_id(model)
        taken = {name for module in model.modules() if isinstance(module, BaseTunerLayer)
                 for name in getattr(module, "lora_A", {})}
        n = next(_ADAPTER_IDS)
        while f"{ADAPTER_PREFIX}{n}" in taken:
            n = next(_ADAPTER_IDS)
        self.adapter_name = f"{ADAPTER_PREFIX}{n}"
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.target_modules, bias="none")
        # peft's injection re-marks which adapter weights train; other compressors on this model keep theirs.
        others = {n: p.requires_grad for n, p in model.named_parameters() if ADAPTER_PREFIX in n}
        with warnings.catch_warnings():  # a second compressor on one model, GPT-2's Conv1D: both expected
            warnings.filterwarnings("ignore", message=".*(peft_config|fan_in_fan_out).*")
            inject_adapter_in_model(lora, model, adapter_name=self.adapter_name)
        self.layer_names: list[str] = []
        slots = {}
        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer) and self.adapter_name in getattr(module, "lora_A", {}):
                self.layer_names.append(name)
                slots[name.replace(".", "__")] = _LoraSlot(module, self.adapter_name)
                self._set_state(module, active=None, disabled=True)
        if not slots:
            raise ValueError(f"target_modules={config.target_modules!r} matched no module of this "
                             f"{self.info.model_type} model")
        self.lora = nn.ModuleDict(slots)
        embed = model.get_input_embeddings().weight
        self.head = nn.Linear(self.info.hidden_size, self.info.hidden_size, device=embed.device, dtype=embed.dtype)
        self.reset_head()
        for name, param in model.named_parameters():  # the base is frozen; other compressors' LoRAs unchanged
            param.requires_grad_(others.get(name, False))
        self.requires_grad_(True)
        self._fingerprint: tuple[tuple, str] | None = None

    # ------------------------------------------------------------------ set-up
    def reset_head(self) -> None:
        """Initialise the head as ``config.head_init`` says (zero, or identity weight and zero bias)."""
        with torch.no_grad():
            if self.config.head_init == "zero":
                self.head.weight.zero_()
            else:
                self.head.weight.copy_(torch.eye(self.info.hidden_size, dtype=self.head.weight.dtype))
            self.head.bias.zero_()

    @staticmethod
    def _set_state(layer: BaseTunerLayer, active: list[str] | None, disabled: bool) -> None:
        # peft's enable_adapters / set_adapter also flip requires_grad of adapter weights; the compressor only
        # switches what the forward reads (the active adapter list and the disabled flag) and leaves grads alone.
        if active is not None:
            layer._active_adapter = active
        layer._disable_adapters = disabled

    def _layers(self, model: PreTrainedModel) -> list[BaseTunerLayer]:
        try:
            layers = [model.get_submodule(name) for name in self.layer_names]
        except AttributeError:
            layers = []
        if not layers or any(self.adapter_name not in getattr(layer, "lora_A", {}) for layer in layers):
            raise ValueError(f"this model does not hold the compressor's adapter {self.adapter_name!r}: pass the "
                             "model the compressor was built on (or SegmentCompressor.load(folder, model))")
        return layers

    @contextmanager
    def adapter(self, model: PreTrainedModel) -> Iterator[None]:
        """Context in which ``model`` runs with this compressor's LoRA (and no other adapter) enabled."""
        layers = self._layers(model)
        saved = [(layer._active_adapter, layer._disable_adapters) for layer in layers]
        try:
            for layer in layers:
                self._set_state(layer, active=[self.adapter_name], disabled=False)
            yield
        finally:
            for layer, (active, disabled) in zip(layers, saved, strict=True):
                self._set_state(layer, active=active, disabled=disabled)

    def num_parameters(self) -> int:
        """Trainable compressor parameters (LoRA + head)."""
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------- encoding
    def _check_segments(self, segments: Sequence[Sequence[int]]) -> None:
        for i, seg in enumerate(segments):
            if not 1 <= len(seg) <= self.config.segment_len:
                raise ValueError(f"segment {i} has {len(seg)} tokens; allowed: 1..segment_len="
                                 f"{self.config.segment_len}")
            bad = [t for t in seg if not 0 <= int(t) < self.info.vocab_size]
            if bad:
                raise ValueError(f"segment {i} holds token ids {bad[:5]} outside the vocabulary [0, "
                                 f"{self.info.vocab_size})")

    def encode_segments(
        self,
        model: PreTrainedModel,
        segments: Sequence[Sequence[int]],
        cache: SegmentCache | None = None,
        batch_segments: int = 256,
    ) -> list[torch.Tensor]:
        """Concept embeddings of independent segments.

        Each segment is one row of a right-padded batch (positions start at 0 on every row,
        the attention mask hides the padding), so a segment gets the same CEs alone or in
        any batch.

        Args:
            model: The base model the compressor was built on.
            segments: Token ids of each segment, ``1..segment_len`` ids each.
            cache: Reuse / store CEs by segment content (inference only: under ``torch.no_grad()``
                with the compressor in eval mode).
            batch_segments: Segments per forward pass (memory bound, not a result change).

        Returns:
            One ``[ceil(n_i / ratio), D]`` tensor per segment, in the input embeddings' dtype.

        Raises:
            ValueError: Empty or too long segments, ids outside the vocabulary, a model without
                this compressor's adapter, a cache used with gradients on or in training mode.
        """
        self._check_segments(segments)
        if batch_segments < 1:
            raise ValueError(f"batch_segments={batch_segments!r} must be >= 1")
        if cache is not None:
            if torch.is_grad_enabled() or self.training:
                raise ValueError("cache= is for inference: call under torch.no_grad() with the compressor in eval "
                                 "mode (cached concept embeddings carry no graph)")
            return cache.lookup(self, segments, lambda missing: self.encode_segments(
                model, missing, batch_segments=batch_segments))
        self._layers(model)
        out: list[torch.Tensor] = []
        for start in range(0, len(segments), batch_segments):
            out.extend(self._encode_batch(model, [list(map(int, s)) for s in segments[start:start + batch_segments]]))
        return out

    def _encode_batch(self, model: PreTrainedModel, segments: list[list[int]]) -> list[torch.Tensor]:
        ratio = self.config.ratio
        device = model.get_input_embeddings().weight.device
        lengths = [len(s) for s in segments]
        groups = [math.ceil(n / ratio) for n in lengths]
        width = max(n + k for n, k in zip(lengths, groups, strict=True))
        kmax = max(groups)
        ids = torch.full((len(segments), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(segments), width), dtype=torch.long)
        # Token ids grouped by CE: [S, kmax * ratio], with a count per group for the mean.
        grouped = torch.zeros((len(segments), kmax * ratio), dtype=torch.long)
        member = torch.zeros((len(segments), kmax * ratio), dtype=torch.bool)
        eos_at = torch.zeros((len(segments), kmax), dtype=torch.long)
        for i, (seg, n, k) in enumerate(zip(segments, lengths, groups, strict=True)):
            ids[i, :n] = torch.tensor(seg)
            mask[i, :n + k] = 1
            grouped[i, :n] = torch.tensor(seg)
            member[i, :n] = True
            eos_at[i] = torch.arange(n, n + kmax).clamp_max(width - 1)
        ids, mask, grouped, member, eos_at = (t.to(device) for t in (ids, mask, grouped, member, eos_at))
        positions = torch.arange(width, device=device)[None].expand(len(segments), -1)
        with self.adapter(model):
            hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                      use_cache=False).last_hidden_state  # [S, W, D], after the final norm
        width_d = hidden.shape[-1]
        h = hidden.gather(1, eos_at[..., None].expand(-1, -1, width_d))  # [S, kmax, D]
        ce = self.head(h.to(self.head.weight.dtype))
        embed = model.get_input_embeddings()
        if self.config.residual == "mean":
            tokens = embed(grouped) * member[..., None]  # [S, kmax * ratio, D]
            sums = tokens.view(len(segments), kmax, ratio, width_d).sum(2)
            counts = member.view(len(segments), kmax, ratio).sum(2).clamp_min(1)
            ce = ce + (sums / counts[..., None]).to(ce.dtype)
        ce = ce.to(embed.weight.dtype)
        return [ce[i, :k] for i, k in enumerate(groups)]

    def compress(self, model: PreTrainedModel, context_ids: Sequence[int],
                 cache: SegmentCache | None = None) -> torch.Tensor:
        """Concept embeddings of a whole context: segments of ``segment_len`` from its start.

        Args:
            model: The base model the compressor was built on.
            context_ids: The context's token ids (at least one).
            cache: Optional :class:`~softtok.compression.cache.SegmentCache` (inference only).

        Returns:
            ``[K, D]`` with ``K = compressed_length(len(context_ids), config)``.

        Raises:
            ValueError: Empty context, ids outside the vocabulary (and as :meth:`encode_segments`).
        """
        if len(context_ids) == 0:
            raise ValueError("context_ids is empty; there is nothing to compress")
        return torch.cat(self.encode_segments(model, split_segments(context_ids, self.config.segment_len),
                                              cache=cache), dim=0)

    def prefill(self, context_mask: torch.Tensor, cache: SegmentCache | None = None) -> CompressedContext:
        """A :class:`~softtok.generation.prefill.PrefillBuilder` that compresses each row's context span.

        Args:
            context_mask: ``[B, T]`` marking each row's context tokens in the left-padded
                full-context prompt the generator will pass (one contiguous span per row).
            cache: Optional segment cache.
        """
        from softtok.compression.prefill import CompressedContext

        return CompressedContext(self, context_mask, cache=cache)

    # ----------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """SHA-256 of the config, model shapes and weights: changes whenever a weight changes.

        Memoised on the parameters' in-place version counters, so calling it per query is cheap.
        """
        versions = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self._fingerprint is not None and self._fingerprint[0] == versions:
            return self._fingerprint[1]
        digest = hashlib.sha256(json.dumps([self.config.to_dict(), self.info.to_dict()], sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        value = digest.hexdigest()
        self._fingerprint = (versions, value)
        return value

    # -------------------------------------------------------------------- files
    def save(self, folder: str | Path) -> Path:
        """Write LoRA + head weights (safetensors) and config + model shapes (JSON) into ``folder``, atomically.

        The files are written into a temporary folder beside ``folder`` and renamed into place
        (:func:`softtok.models.replace_folder`). An existing ``folder`` is replaced only if it
        is empty or holds a saved compressor (nothing else is ever deleted).

        Returns:
            The folder written.

        Raises:
            FileExistsError: ``folder`` is a file, or a folder with other contents.
        """
        from softtok.models import replace_folder

        target = Path(folder).expanduser()
        if target.exists() and not (target.is_dir() and (not any(target.iterdir())
                                                          or (target / CONFIG_FILE).is_file())):
            raise FileExistsError(f"{str(target)!r} exists and is not an empty folder or a saved compressor; "
                                  "save into a new folder (nothing was written)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        os.chmod(tmp, 0o755)
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
            meta = {"format": FORMAT, "version": 1, "config": self.config.to_dict(), "model": self.info.to_dict(),
                    "adapter_layers": self.layer_names}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            replace_folder(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @staticmethod
    def read_meta(folder: str | Path) -> dict[str, Any]:
        """The JSON metadata of a saved compressor.

        Raises:
            FileNotFoundError: ``folder`` holds no saved compressor.
            ValueError: The JSON is not a softtok compressor's.
        """
        path = Path(folder).expanduser() / CONFIG_FILE
        if not path.is_file() or not (path.parent / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder!s} holds no saved compressor ({CONFIG_FILE} + {WEIGHTS_FILE})")
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a softtok compressor (format={meta.get('format')!r})")
        return meta

    @classmethod
    def load(cls, folder: str | Path, model: PreTrainedModel) -> SegmentCompressor:
        """Build a compressor on ``model`` (injecting a fresh LoRA) and load the weights saved in ``folder``.

        Returns the compressor in eval mode (ready for inference and a segment cache).

        Raises:
            FileNotFoundError: No saved compressor in ``folder``.
            ValueError: It was saved for a model of other shapes.
        """
        meta = cls.read_meta(folder)
        saved = ModelInfo(**meta["model"])
        saved.check_compatible(ModelInfo.from_model(model), f"the compressor in {folder!s}")
        compressor = cls(CompressionConfig.from_dict(meta["config"]), model)
        state = load_file(str(Path(folder).expanduser() / WEIGHTS_FILE))
        mine = compressor.state_dict()
        if set(state) != set(mine):
            raise ValueError(f"{folder!s}: saved weights {sorted(set(state) ^ set(mine))[:6]} do not match this "
                             "compressor's (another target_modules or architecture?)")
        compressor.load_state_dict({k: v.to(mine[k].device, mine[k].dtype) for k, v in state.items()})
        return compressor.eval()
