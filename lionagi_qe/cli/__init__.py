"""``lionagi-qe``: the command line (typer + rich).

Every command takes ``--database-url`` and ``--redis-url`` (default: ``Settings``, i.e. the
``AQE_DATABASE_URL`` / ``AQE_REDIS_URL`` environment variables or ``.env``, else the embedded
SQLite file ``./aqe-memory.db``); an empty ``--redis-url ""`` turns a configured cache tier off.
Commands that print data take ``--json`` and then write exactly one JSON document to stdout.

Errors are one red line ``error: <message>`` on stderr, never a traceback, with passwords
masked. Exit codes: 0 success, 1 a failed operation (a missing key, a storage error, drift found
by ``db check``), 2 a usage error (bad options, a value that is not JSON), 130 interrupted.

One module per command group; :mod:`lionagi_qe.cli.common` holds what they share.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lionagi_qe import __version__
from lionagi_qe.cli import bench, db, demo, memory, transfer

__all__ = ["app", "main"]

app = typer.Typer(
    name="lionagi-qe",
    help="Persistence for fleets of QE agents: memory, migrations and a demo fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _group in (db, memory, transfer, demo, bench):
    _group.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lionagi-qe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Persistence for fleets of QE agents: memory, migrations and a demo fleet."""


def main() -> None:
    """Run the ``lionagi-qe`` command line."""
    app(prog_name="lionagi-qe")
