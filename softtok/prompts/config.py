"""Soft-prompt configurations: validated on construction, before any model is loaded.

They are plain classes (not dataclasses) so that LightningCLI can pick one by
``class_path`` in a YAML file::

    prompt:
      class_path: softtok.prompts.PromptTuningConfig
      init_args: {n_virtual: 20, init: text}

Each config knows its method name, round-trips through :meth:`PromptConfig.to_dict` /
:func:`config_from_dict` (stored in checkpoints) and builds its module with
:meth:`PromptConfig.build`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

#: Initialisations shared by all methods.
INITS: tuple[str, ...] = ("text", "sample_vocab", "random")
#: Activations of the instruction-aware generator.
ACTIVATIONS: tuple[str, ...] = ("rational", "gelu", "silu", "tanh", "relu", "identity")
DEFAULT_INIT_TEXT = "Answer the question. Give only the final number."


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {', '.join(allowed)}")


class PromptConfig:
    """Base of the soft-prompt configurations.

    Args:
        n_virtual: Number of virtual tokens, at least 1.
        init: ``"text"`` (embeddings of ``init_text``, cut or repeated to ``n_virtual``),
            ``"sample_vocab"`` (rows of random vocabulary tokens) or ``"random"`` (Gaussian).
        init_text: Text for ``init="text"``.
        truncate_init_text: Allow ``init_text`` longer than ``n_virtual`` tokens (it is cut);
            without it a longer text is an error, so a prompt is never silently truncated.
    """

    method: ClassVar[str] = ""

    def __init__(
        self,
        n_virtual: int = 20,
        init: str = "text",
        init_text: str = DEFAULT_INIT_TEXT,
        truncate_init_text: bool = False,
    ) -> None:
        _check_int("n_virtual", n_virtual, 1)
        _check_choice("init", init, INITS)
        if init == "text" and not (isinstance(init_text, str) and init_text.strip()):
            raise ValueError(f"init='text' needs a non-empty init_text, got {init_text!r}")
        self.n_virtual = n_virtual
        self.init = init
        self.init_text = init_text
        self.truncate_init_text = bool(truncate_init_text)

    def to_dict(self) -> dict[str, Any]:
        """Constructor arguments plus ``method`` (plain types only: safe in ``weights_only`` checkpoints)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {"method": self.method, **{name: getattr(self, name) for name in names}}

    def build(self, model, tokenizer=None):  # noqa: ANN001, ANN201 - typed in the subclasses
        """Build the prompt module for ``model`` (``tokenizer`` is needed for ``init="text"``)."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "method")
        return f"{type(self).__name__}({args})"


class PromptTuningConfig(PromptConfig):
    """Prompt tuning (Lester et al., 2021): ``n_virtual`` free input embeddings in front of the text.

    Args:
        n_virtual: Virtual tokens (PEFT ``num_virtual_tokens``).
        init: ``"text"``, ``"sample_vocab"`` or ``"random"``.
        init_text: Text for ``init="text"``.
        truncate_init_text: Allow cutting an ``init_text`` longer than ``n_virtual`` tokens.
    """

    method = "prompt_tuning"

    def build(self, model, tokenizer=None):  # noqa: ANN001, ANN201
        from softtok.prompts.tuning import PromptTuning

        return PromptTuning(self, model, tokenizer)


class PrefixTuningConfig(PromptConfig):
    """Prefix tuning (Li and Liang, 2021): trainable key/value prefixes in every layer.

    Args:
        n_virtual: Prefix length (PEFT ``num_virtual_tokens``).
        init: ``"text"`` (the keys/values the model itself computes for ``init_text``: at
            initialisation the prefix is exactly that text as a hard prompt), ``"sample_vocab"``
            (the same for random vocabulary tokens) or ``"random"`` (Gaussian with the per-layer
            scale of real keys/values).
        init_text: Text for ``init="text"``.
        truncate_init_text: Allow cutting an ``init_text`` longer than ``n_virtual`` tokens.
        projection_hidden: ``0``: the prefixes are the parameters. ``> 0``: they are produced by
            an MLP ``embedding [P, D] -> Linear(D, h) -> tanh -> Linear(h, L*2*kv)`` (the
            reparameterisation of the paper, PEFT ``prefix_projection``), folded into plain
            prefixes on export.
    """

    method = "prefix_tuning"

    def __init__(
        self,
        n_virtual: int = 10,
        init: str = "text",
        init_text: str = DEFAULT_INIT_TEXT,
        truncate_init_text: bool = False,
        projection_hidden: int = 0,
    ) -> None:
        super().__init__(n_virtual, init, init_text, truncate_init_text)
        _check_int("projection_hidden", projection_hidden, 0)
        self.projection_hidden = projection_hidden

    def build(self, model, tokenizer=None):  # noqa: ANN001, ANN201
        from softtok.prompts.prefix import PrefixTuning

        return PrefixTuning(self, model, tokenizer)


class IAPTConfig(PromptConfig):
    """Instruction-aware prompts (IAPT-style): soft tokens generated from the instruction.

    A static prompt of ``n_virtual`` embeddings (initialised like prompt tuning) enters at
    the input; before each chosen layer a small generator pools the instruction's hidden
    states (down-projection, attention pooling with ``n_virtual`` learned queries,
    activation, up-projection) and adds the result to the hidden states of the virtual
    positions. The up-projection starts at zero, so training starts from plain prompt tuning.

    Args:
        n_virtual: Soft tokens per layer (IAPT uses 4).
        init: Initialisation of the static input prompt (``"text"``, ``"sample_vocab"``, ``"random"``).
        init_text: Text for ``init="text"``.
        truncate_init_text: Allow cutting an ``init_text`` longer than ``n_virtual`` tokens.
        bottleneck: Width of the generator's down-projection, at least 1.
        deep: ``True``: a generator before every decoder layer (IAPT). ``False``: one generator
            before the first layer only (cheaper; the instruction's input embeddings).
        share_generators: One generator shared by all layers instead of one per layer.
        activation: ``"rational"`` (a learned rational function, initialised near GELU, as
            in IAPT), or ``"gelu"``, ``"silu"``, ``"tanh"``, ``"relu"``, ``"identity"``.
    """

    method = "iapt"

    def __init__(
        self,
        n_virtual: int = 4,
        init: str = "text",
        init_text: str = "Answer with the number.",
        truncate_init_text: bool = True,
        bottleneck: int = 16,
        deep: bool = True,
        share_generators: bool = False,
        activation: str = "rational",
    ) -> None:
        super().__init__(n_virtual, init, init_text, truncate_init_text)
        _check_int("bottleneck", bottleneck, 1)
        _check_choice("activation", activation, ACTIVATIONS)
        self.bottleneck = bottleneck
        self.deep = bool(deep)
        self.share_generators = bool(share_generators)
        self.activation = activation

    def build(self, model, tokenizer=None):  # noqa: ANN001, ANN201
        from softtok.prompts.iapt import InstructionAwarePrompt

        return InstructionAwarePrompt(self, model, tokenizer)


#: Method name -> config class.
CONFIGS: dict[str, type[PromptConfig]] = {
    cls.method: cls for cls in (PromptTuningConfig, PrefixTuningConfig, IAPTConfig)
}


def config_from_dict(data: dict[str, Any]) -> PromptConfig:
    """Rebuild a config from :meth:`PromptConfig.to_dict` output, or from the
    ``{"class_path": ..., "init_args": {...}}`` form of :func:`config_to_class_path`.

    Raises:
        ValueError: Unknown or missing ``method`` / ``class_path``.
    """
    data = dict(data)
    if "class_path" in data:
        name = str(data["class_path"]).rsplit(".", 1)[-1]
        by_name = {cls.__name__: cls for cls in CONFIGS.values()}
        if name not in by_name:
            raise ValueError(f"unknown soft-prompt config class {data['class_path']!r}; allowed: {', '.join(by_name)}")
        return by_name[name](**data.get("init_args", {}))
    method = data.pop("method", None)
    if method not in CONFIGS:
        raise ValueError(f"unknown soft-prompt method {method!r}; allowed: {', '.join(CONFIGS)}")
    return CONFIGS[method](**data)


def config_to_class_path(config: PromptConfig) -> dict[str, Any]:
    """The config as LightningCLI writes it (``class_path`` + ``init_args``, plain types only).

    Checkpoint hyperparameters use this form, so ``softtok test --ckpt_path`` can parse them
    back into the same config.
    """
    init_args = {k: v for k, v in config.to_dict().items() if k != "method"}
    return {"class_path": f"softtok.prompts.{type(config).__name__}", "init_args": init_args}
