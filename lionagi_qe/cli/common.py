"""What every command shares: URL options, output, one-line errors, running async work."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.config import Settings
from lionagi_qe.errors import PersistenceError

T = TypeVar("T")

#: Exit code of a failed operation.
EXIT_FAILURE = 1
#: Exit code of a usage error (what typer/click use for bad options too).
EXIT_USAGE = 2
#: Exit code after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL (PostgreSQL or SQLite). Default: AQE_DATABASE_URL, else the "
        "embedded SQLite file ./aqe-memory.db.",
        show_default=False,
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help='Redis URL of the cache tier. Default: AQE_REDIS_URL (none); "" turns it off.',
        show_default=False,
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (for scripts).")
]


# -- output and errors -----------------------------------------------------------------------


def stdout_console() -> Console:
    # Built per call: the test runner swaps sys.stdout between invocations.
    return Console(highlight=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def emit_json(document: Any) -> None:
    """Write ``document`` as one JSON document (no rich formatting, no wrapping)."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


class Secrets:
    """Passwords of the URLs in use, to scrub from any message before it is shown."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, url: str | None) -> None:
        if not url:
            return
        try:
            password = make_url(url).password
        except (ArgumentError, ValueError):
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
        if password:
            self.values.add(str(password))

    def scrub(self, text: str) -> str:
        for secret in sorted(self.values, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


secrets = Secrets()


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` as one red line on stderr and exit with ``code``."""
    line = " ".join(secrets.scrub(message).split()) or "unknown error"
    stderr_console().print(
        Text(f"error: {line}", style="bold red"), soft_wrap=True, markup=False, highlight=False
    )
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn every exception into one ``error:`` line and an exit code (never a traceback)."""
    from alembic.util import CommandError

    from lionagi_qe.db.translate import translate

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except (PersistenceError, ValueError, CommandError) as exc:
        # ValueError: bad input (InvalidKeyError, InvalidTTLError, ... are ValueErrors too).
        fail(str(exc) or type(exc).__name__)
    except (SQLAlchemyError, ConnectionError) as exc:
        fail(str(translate(exc)))
    except TimeoutError:
        fail("timed out")
    except OSError as exc:
        fail(str(translate(exc)))
    except Exception as exc:
        fail(f"unexpected {type(exc).__name__}: {exc}")


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` in a fresh event loop, reporting errors as one line."""
    with reported_errors():

        async def runner() -> T:
            return await work()

        return asyncio.run(runner())
    raise AssertionError("unreachable")  # pragma: no cover


def load_settings() -> Settings:
    """``Settings`` from the environment; invalid ones end the command with one line each."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"AQE_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        fail(f"invalid settings: {problems}")


def resolve_urls(database_url: str | None, redis_url: str | None) -> tuple[str, str | None]:
    """The URLs to use: the options, else ``Settings``; remember their passwords to scrub."""
    if database_url is None or redis_url is None:
        settings = load_settings()
        database_url = database_url or settings.database_url
        redis_url = settings.redis_url if redis_url is None else redis_url
    redis = redis_url or None
    secrets.add(database_url)
    secrets.add(redis)
    return database_url, redis


def with_memory(
    database_url: str | None,
    redis_url: str | None,
    work: Callable[[MemoryBackend], Awaitable[T]],
) -> T:
    """Open the backend the URLs describe, run ``work`` on it and always close it."""
    from lionagi_qe.factory import open_memory

    url, redis = resolve_urls(database_url, redis_url)

    async def opened() -> T:
        memory = open_memory(url, redis)
        try:
            return await work(memory)
        finally:
            await memory.close()

    return run(opened)


def reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and the store) does not.
    raise ValueError(f"{name} is not a JSON value")


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
