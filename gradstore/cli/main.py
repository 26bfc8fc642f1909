"""`gradstore` command line: a thin layer mapping flags onto the Python API.

Exit status: 0 success; 2 bad input or usage (one line on stderr); 1 unexpected; 130 after
Ctrl-C (what was committed is kept).
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence

from gradstore.cli.commands import COMMANDS, UsageError
from gradstore.errors import GradstoreError, GradstoreNote


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> Parser:
    p = Parser(prog="gradstore",
               description="An embedded gradient store with training-data selection (GTP).",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("always", GradstoreNote)  # gradstore notes each fact once
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            """Notes as one line on stderr; other warnings as Python shows them."""
            if issubclass(category, GradstoreNote):
                print(f"gradstore: note: {message}", file=sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return run_command(argv)


def run_command(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except GradstoreError as exc:
        msg = str(exc).replace("\n", " ")
        print(msg if isinstance(exc, UsageError) else f"gradstore: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradstore: interrupted; what was committed is kept (run the same command again "
              "to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # a bug, not bad input: keep the traceback for the report
        traceback.print_exc()
        print("gradstore: unexpected error (exit 1); please report it with the trace above",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
