"""``python -m jaxplain.train train ...``: the ``jaxplain train`` command without the rest of the CLI."""

import argparse
import sys

from jaxplain.errors import JaxplainError
from jaxplain.train.command import register


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxplain")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except JaxplainError as e:
        print(f"jaxplain: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
