"""The ``jaxplain`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function. The exit status
means one thing each:

- 0: every item was done;
- 1: the job finished and wrote every good item; the bad items, each named on stderr with its reason
  (and in the output where the command has a place for it), were skipped;
- 2: the job failed and wrote nothing: a bad option (argparse's usage errors), model, bank, input file
  or output, or no memory left; one message says what, without a traceback;
- 3: an internal error, a bug in jaxplain: one message, and the traceback with ``JAXPLAIN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from jaxplain.commands import bank, classify, convert, demo, embed, evaluate, explain
from jaxplain.commands.common import EXIT_ERROR, EXIT_INTERNAL
from jaxplain.errors import JaxplainError
from jaxplain.train import command as train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxplain",
        description="Explain the decisions of CLIP-style vision-language models at scale, in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (bank, classify, convert, demo, embed, evaluate, explain, train):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except JaxplainError as e:
        print(f"jaxplain: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("jaxplain: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "jaxplain: error: out of memory; try a smaller --batch-size (or --chunk), or a machine with more memory",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except OSError as e:
        # The file system's own errors (a full disk, a file removed while it was read): the user's to fix.
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"jaxplain: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        if os.environ.get("JAXPLAIN_DEBUG"):
            traceback.print_exc()
        print(
            f"jaxplain: internal error: {type(e).__name__}: {e} (a bug in jaxplain; "
            f"{'the traceback is above' if os.environ.get('JAXPLAIN_DEBUG') else 'JAXPLAIN_DEBUG=1 shows where'})",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
