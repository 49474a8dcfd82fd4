"""The ``jaxplain`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function. Errors the user
can fix (:class:`~jaxplain.errors.JaxplainError`) print one clear message, without a traceback, and
exit 2. Batch commands report bad items by name, finish the good ones, and exit 1 if any item failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxplain.commands import bank, classify, demo, embed, evaluate, explain
from jaxplain.commands.common import EXIT_ERROR
from jaxplain.errors import JaxplainError
from jaxplain.train import command as train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxplain",
        description="Explain the decisions of CLIP-style vision-language models at scale, in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (bank, classify, demo, embed, evaluate, explain, train):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("jaxplain: error: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args.func(args)
    except JaxplainError as e:
        print(f"jaxplain: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("jaxplain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
