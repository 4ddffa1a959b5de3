"""Reading soft tokens: what an input embedding that is no vocabulary row is near.

Two readings of any ``[N, D]`` input embeddings (a concept token, a noisy RL input, a row
of a tuned soft prompt), in plain PyTorch:

* :func:`~softtok.interpret.vocab.vocab_neighbours`: the nearest vocabulary rows by
  cosine and by L2 distance, through the model's input embedding module;
* :class:`~softtok.interpret.index.ContextIndex` and
  :func:`~softtok.interpret.index.contextual_neighbours`: LatentLens-style contextual
  neighbours, the corpus contexts whose hidden states are nearest to the soft token's
  hidden states (:func:`~softtok.interpret.hidden.hidden_states`) at chosen layers.

:mod:`softtok.interpret.describe` is the ``softtok describe`` command built on them.
"""

from softtok.interpret.hidden import check_layers, default_layers, hidden_states, num_layers
from softtok.interpret.index import ContextIndex, ContextMatch, contextual_neighbours, load_corpus, model_identity
from softtok.interpret.vocab import Neighbours, VocabNeighbours, input_embedding, vocab_neighbours

__all__ = [
    "ContextIndex",
    "ContextMatch",
    "Neighbours",
    "VocabNeighbours",
    "check_layers",
    "contextual_neighbours",
    "default_layers",
    "hidden_states",
    "input_embedding",
    "load_corpus",
    "model_identity",
    "num_layers",
    "vocab_neighbours",
]
