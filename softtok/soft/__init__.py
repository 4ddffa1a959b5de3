"""The soft-token core: plain PyTorch, no Lightning."""

from softtok.soft.embedding import (
    SoftEmbedding,
    SoftStep,
    add_noise,
    embed_dense,
    embed_sparse,
    embedding_rms,
    mixture_mean,
)
from softtok.soft.filters import FilterConfig, entropy, filter_candidates, tempered_probs
from softtok.soft.mixers import (
    MIXERS,
    DirichletMixer,
    GumbelMixer,
    HardMixer,
    Mixer,
    MixtureOfInputsMixer,
    MultiplexMixer,
    TopKMixer,
    build_mixer,
)
from softtok.soft.random import RowRandom, row_seed
from softtok.soft.token import SoftToken

__all__ = [
    "MIXERS",
    "DirichletMixer",
    "FilterConfig",
    "GumbelMixer",
    "HardMixer",
    "Mixer",
    "MixtureOfInputsMixer",
    "MultiplexMixer",
    "RowRandom",
    "SoftEmbedding",
    "SoftStep",
    "SoftToken",
    "TopKMixer",
    "add_noise",
    "build_mixer",
    "embed_dense",
    "embed_sparse",
    "embedding_rms",
    "entropy",
    "filter_candidates",
    "mixture_mean",
    "row_seed",
    "tempered_probs",
]
