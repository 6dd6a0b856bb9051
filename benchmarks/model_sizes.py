"""``python benchmarks/model_sizes.py``: parameter counts of the model size presets."""

import argparse

from sc_fm.model.summary import size_table
from sc_fm.vocab import default_vocab


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/model_sizes.py",
                                     description="Parameter counts of the model size presets.")
    parser.add_argument("--n-tokens", type=int, default=None,
                        help="vocabulary size incl. specials (default: the shipped GENCODE vocabulary)")
    parser.add_argument("--value-encoding", choices=("continuous", "bin"), default="continuous")
    parser.add_argument("--n-bins", type=int, default=51)
    args = parser.parse_args()
    n_tokens = args.n_tokens or default_vocab().n_tokens
    print(f"vocabulary: {n_tokens:,} tokens, value encoding: {args.value_encoding}")
    print(size_table(n_tokens, args.value_encoding, args.n_bins))


if __name__ == "__main__":
    main()
