"""Build a context index from the command line (:meth:`~softtok.interpret.index.ContextIndex.build`).

Usage::

    python -m softtok.interpret.build_index CORPUS.txt OUT_DIR [--model smollm2-135m] [--layers 1 2 4 8]
"""

from __future__ import annotations

import sys

from softtok.interpret.hidden import check_layers, num_layers
from softtok.interpret.index import VECTOR_DTYPES, ContextIndex, load_corpus


def main(argv: list[str] | None = None) -> ContextIndex:
    """``python -m softtok.interpret.build_index CORPUS OUT [--model NAME] [--layers 1 2 4] ...``: build an index."""
    import argparse

    from softtok.models import DEFAULT_MODEL, load_model

    parser = argparse.ArgumentParser(prog="python -m softtok.interpret.build_index",
                                     description="Build a LatentLens-style context index of a model's hidden states.")
    parser.add_argument("corpus", help="text file, one context source per line")
    parser.add_argument("out", help="index directory to write")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or folder (default {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="float32", help="model weight dtype (default float32)")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="layers in [0, L] (default: LatentLens's grid 1 2 4 8 16 24 L-2 L-1)")
    parser.add_argument("--max-contexts-per-token", type=int, default=50)
    parser.add_argument("--min-position", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vector-dtype", default="float16", choices=tuple(VECTOR_DTYPES))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    args = parser.parse_args(argv)
    try:
        texts = load_corpus(args.corpus)
        model, tokenizer = load_model(args.model, dtype=args.dtype)
        if args.layers is not None:
            check_layers(args.layers, num_layers(model))
        index = ContextIndex.build(model, tokenizer, texts, args.out, args.layers, args.max_contexts_per_token,
                                   args.min_position, args.max_length, args.batch_size, args.vector_dtype,
                                   args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"built {index}", file=sys.stderr)
    return index


if __name__ == "__main__":
    main()
