"""The ``kargo-bitbucket`` command line (SPEC §10): ``main`` and the top-level parser.

Each command is a module with ``register(parser)`` (its arguments, ``run`` as default)
and ``run(args) -> exit code``; the work they print lives outside this package.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from kargo_bitbucket import __version__, logs
from kargo_bitbucket.cli import (
    apply,
    delete,
    deliveries,
    explain,
    get,
    hooks,
    lint,
    secret,
    send,
    serve,
    urls,
)
from kargo_bitbucket.cli.common import (
    FAILURE,
    USAGE_ERROR,
    CommandParser,
    Failure,
    UsageError,
    fail,
)
from kargo_bitbucket.config import ConfigError, FromEnv, choice, resolve_env
from kargo_bitbucket.core.manifests import ManifestError
from kargo_bitbucket.store.state_file import StateFileError, StateFileUnwritable

LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_LEVEL_HELP = "log level (env KARGO_BITBUCKET_LOG_LEVEL; default info)"
COMMANDS: tuple[tuple[str, ModuleType, str], ...] = (
    ("serve", serve, "run the webhook receiver"),
    ("apply", apply, "create or update objects from manifests"),
    ("delete", delete, "delete objects, by KIND NAME or as named in manifests (-f)"),
    ("get", get, "show objects"),
    ("urls", urls, "list the published receiver URLs"),
    ("send", send, "sign and POST a realistic Bitbucket delivery"),
    ("deliveries", deliveries, "recent deliveries and why each candidate was (not) refreshed"),
    ("explain", explain, "dry run: what a push or PR event would refresh, and why"),
    ("lint", lint, "what the receiver reads differently from what Warehouses and configs say"),
    ("hooks", hooks, "check or create the Bitbucket webhooks every receiver needs"),
    ("secret", secret, "print a new random secret and its Secret manifest"),
)
_DESCRIPTIONS = {"get": get.DESCRIPTION, "lint": lint.DESCRIPTION}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the console command: exit 0 ok, 1 runtime failure, 2 usage error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for argument in argv:
        if not argument.isascii() and not _is_utf8(argument):
            fail(f"argument {argument!r} is not valid UTF-8", USAGE_ERROR)
    args = parser().parse_args(argv)
    try:
        resolve_env(vars(args))
    except ConfigError as error:
        fail(str(error), USAGE_ERROR)
    logs.configure(args.log_level)
    try:
        code = args.run(args)
        sys.stdout.flush()
    except UsageError as error:
        message, *more = error.lines
        fail(message, USAGE_ERROR, *more)
    except StateFileUnwritable as error:
        fail(str(error), FAILURE)
    except (ManifestError, ConfigError, StateFileError) as error:
        fail(str(error), USAGE_ERROR)
    except Failure as error:
        fail(str(error), FAILURE)
    except BrokenPipeError:
        # The reader went away (`get ... | head`): say nothing more, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = FAILURE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _is_utf8(argument: str) -> bool:
    """Whether an argument came as UTF-8: Python turns other bytes into lone surrogates,
    which SQLite, JSON and the HTTP client then refuse with a traceback."""
    try:
        argument.encode()
    except UnicodeEncodeError:
        return False
    return True


def parser() -> argparse.ArgumentParser:
    """The whole command line: global flags, then one sub-parser per command."""
    top = argparse.ArgumentParser(
        prog="kargo-bitbucket",
        description="Bitbucket webhook receiver that refreshes Kargo Warehouses and Promotions.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument(
        "--log-level",
        default=FromEnv("LOG_LEVEL", "info", choice(*LOG_LEVELS), " or ".join(LOG_LEVELS)),
        choices=LOG_LEVELS,
        help=LOG_LEVEL_HELP,
    )
    commands = top.add_subparsers(
        title="commands", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    # Also accepted after the command (`serve --log-level debug`), where people put it.
    after = CommandParser(add_help=False)
    after.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help=LOG_LEVEL_HELP
    )
    for name, module, what in COMMANDS:
        command = commands.add_parser(
            name, parents=[after], help=what, description=_DESCRIPTIONS.get(name, what)
        )
        if module is hooks:
            hooks.register(command, [after])
        else:
            module.register(command)
    return top
