# PYTHON_ARGCOMPLETE_OK
"""`promo`: the local stack, the tables, one run of the job, a demo on sample data, and the
operator's recovery tools (rewind the input, replay dead letters)."""

# The docstring above is `promo --help`'s description. Each verb group's module adds its own
# commands (`add_parser`); this module only assembles them and turns errors into one line.
# The marker on the first line lets argcomplete's global activation complete `promo`.

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import NoReturn

import argcomplete

from promo_pipeline.cli import messages, recovery, run, stack, status
from promo_pipeline.cli.common import UserError, connection_problem
from promo_pipeline.settings import SettingsError

# The order of `promo --help`'s command list.
VERB_GROUPS = (stack, messages, status, recovery, run)


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes as one line naming the fix, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(
        prog="promo",
        description=__doc__,
        epilog="examples:\n  promo stack up && promo send promo_pipeline/sample/campaigns.jsonl "
        "&& promo run\n  promo tail --from-beginning -n 5\n  promo status\n"
        "Settings come from the environment, else from .promo/stack.env.\n"
        "Exit status: 0 done, 1 failed (a service, a setting, the data), 2 a wrong command "
        "line.\n"
        'Tab completion in bash: eval "$(register-python-argcomplete promo)"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"promo {version('promo_pipeline')}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in VERB_GROUPS:
        group.add_parser(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("py4j", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    top = parser()
    # Answers a shell's completion request and exits; does nothing otherwise.
    argcomplete.autocomplete(top)
    args = top.parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"promo: {error}", file=sys.stderr)
        return error.exit_status
    except SettingsError as error:
        print(f"promo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        problem = connection_problem(error)
        if problem is None:
            raise
        print(f"promo: {problem}", file=sys.stderr)
        return 1
