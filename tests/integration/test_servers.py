"""Tests for test-server discovery (``lionagi_qe.testing.servers``) against real servers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
from sqlalchemy.engine import make_url

from lionagi_qe.testing import servers, throwaway
from lionagi_qe.testing.servers import (
    FoundServer,
    ServerUnavailableError,
    check_postgres,
    check_redis,
    create_database,
    drop_database,
    find_postgres,
    find_redis,
    find_servers,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AQE_TEST_* variables and no compose servers: only what each test sets."""
    monkeypatch.delenv("AQE_TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("AQE_TEST_REDIS_URL", raising=False)
    port = closed_port()
    monkeypatch.setattr(
        servers, "_COMPOSE_POSTGRES_URL", f"postgresql+asyncpg://u@127.0.0.1:{port}/d"
    )
    monkeypatch.setattr(servers, "_COMPOSE_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    return monkeypatch


@pytest.fixture(scope="module")
def postgres() -> FoundServer:
    """Whatever PostgreSQL this environment offers (env, compose, local or throwaway)."""
    return find_postgres()


@pytest.fixture(scope="module")
def redis_server() -> FoundServer:
    """Whatever Redis this environment offers."""
    return find_redis()


def require_local(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) != 0:
            pytest.skip(f"no local server on {host}:{port} here")


# --- environment variables ------------------------------------------------------------------


def test_unreachable_redis_env_raises_instead_of_falling_through(
    no_env: pytest.MonkeyPatch,
) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    no_env.setenv("AQE_TEST_REDIS_URL", url)
    no_env.setattr(servers, "_COMPOSE_REDIS_URL", servers._LOCAL_REDIS_URL)

    with pytest.raises(ServerUnavailableError) as caught:
        find_redis()

    message = str(caught.value)
    assert f"AQE_TEST_REDIS_URL={url}" in message
    assert "unreachable" in message
    assert "docker compose -f docker-compose-test.yml up -d" in message


@pytest.mark.integration
@pytest.mark.postgres
def test_unreachable_postgres_env_names_it_without_the_password(
    no_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://agent:s3cret-pw@127.0.0.1:{closed_port()}/qe"
    no_env.setenv("AQE_TEST_DATABASE_URL", url)

    with pytest.raises(ServerUnavailableError) as caught:
        find_postgres()

    message = str(caught.value)
    assert "AQE_TEST_DATABASE_URL=postgresql+asyncpg://agent:***@127.0.0.1:" in message
    assert "pg_ctlcluster" in message or "apt-get install -y postgresql" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in caplog.text


@pytest.mark.integration
@pytest.mark.postgres
def test_postgres_env_login_failure_is_reported(
    no_env: pytest.MonkeyPatch, postgres: FoundServer
) -> None:
    """A server that answers but refuses the login still stops the search."""
    target = make_url(postgres.url).set(database="aqe_no_such_database", password="hunter2-pw")
    no_env.setenv("AQE_TEST_DATABASE_URL", target.render_as_string(hide_password=False))

    with pytest.raises(ServerUnavailableError) as caught:
        find_postgres()

    assert "aqe_no_such_database" in str(caught.value)
    assert "hunter2-pw" not in str(caught.value)


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_env_urls_win_and_postgres_url_gets_the_asyncpg_driver(
    no_env: pytest.MonkeyPatch, postgres: FoundServer, redis_server: FoundServer
) -> None:
    plain = make_url(postgres.url).set(drivername="postgresql").render_as_string(False)
    no_env.setenv("AQE_TEST_DATABASE_URL", plain)
    no_env.setenv("AQE_TEST_REDIS_URL", redis_server.url)

    found_postgres, found_redis = find_servers(start_throwaway=False)

    assert found_postgres == FoundServer(postgres.url, "env")
    assert found_postgres.url.startswith("postgresql+asyncpg://")
    assert found_redis == FoundServer(redis_server.url, "env")


def test_both_env_urls_unreachable_give_one_message(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("AQE_TEST_DATABASE_URL", f"postgresql://u@127.0.0.1:{closed_port()}/d")
    no_env.setenv("AQE_TEST_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")

    with pytest.raises(ServerUnavailableError) as caught:
        find_servers()

    assert "AQE_TEST_DATABASE_URL=" in str(caught.value)
    assert "AQE_TEST_REDIS_URL=" in str(caught.value)


# --- compose, local, nothing ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_compose_ports_come_before_local_defaults(
    no_env: pytest.MonkeyPatch, postgres: FoundServer, redis_server: FoundServer
) -> None:
    no_env.setenv("AQE_TEST_DATABASE_URL", "")  # empty counts as unset
    no_env.setattr(servers, "_COMPOSE_POSTGRES_URL", postgres.url)
    no_env.setattr(servers, "_COMPOSE_REDIS_URL", redis_server.url)

    assert find_postgres(start_throwaway=False) == FoundServer(postgres.url, "compose")
    assert find_redis(start_throwaway=False) == FoundServer(redis_server.url, "compose")


@pytest.mark.integration
@pytest.mark.postgres
def test_finds_the_local_postgres(no_env: pytest.MonkeyPatch) -> None:
    require_local("127.0.0.1", 5432)

    found = find_postgres(start_throwaway=False)

    assert found.source == "local"
    assert found.url.startswith("postgresql+asyncpg://")
    assert make_url(found.url).port == 5432
    assert check_postgres(found.url) is None


@pytest.mark.integration
@pytest.mark.redis
def test_finds_the_local_redis(no_env: pytest.MonkeyPatch) -> None:
    require_local("127.0.0.1", 6379)

    found = find_redis(start_throwaway=False)

    assert found == FoundServer("redis://127.0.0.1:6379/0", "local")
    client = redis.Redis.from_url(found.url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_nothing_reachable_raises_one_message_naming_each_server(
    no_env: pytest.MonkeyPatch,
) -> None:
    port = closed_port()
    no_env.setattr(servers, "_LOCAL_POSTGRES", ("127.0.0.1", port, "postgres"))
    no_env.setattr(servers, "_LOCAL_REDIS_URL", f"redis://127.0.0.1:{port}/0")

    with pytest.raises(ServerUnavailableError) as caught:
        find_servers(start_throwaway=False)

    message = str(caught.value)
    assert "No PostgreSQL server" in message
    assert "No Redis server" in message
    assert message.count(f"127.0.0.1:{port}") >= 3  # local postgres (x2 users) and redis
    assert "AQE_TEST_DATABASE_URL: not set" in message
    assert "throwaway: not attempted" in message
    assert "docker compose -f docker-compose-test.yml up -d" in message
    assert "redis-server --daemonize yes" in message


@pytest.mark.integration
@pytest.mark.postgres
async def test_probe_works_while_an_event_loop_runs(postgres: FoundServer) -> None:
    assert check_postgres(postgres.url) is None
    assert check_postgres(f"postgresql+asyncpg://u@127.0.0.1:{closed_port()}/d") is not None


def test_probes_reject_garbage_without_raising() -> None:
    assert check_postgres("not a url") is not None
    assert check_redis("http://127.0.0.1:6379/0") is not None
    assert check_redis("redis://127.0.0.1:notaport/0") is not None


def test_repr_hides_the_password() -> None:
    found = FoundServer("postgresql+asyncpg://agent:pw-in-repr@db:5432/qe", "env")

    assert "pw-in-repr" not in repr(found)
    assert "agent:***@db:5432" in repr(found)


# --- databases ------------------------------------------------------------------------------


@pytest.fixture
def database_name(postgres: FoundServer) -> Iterator[str]:
    name = f"aqe_servers_{uuid.uuid4().hex[:12]}"
    yield name
    drop_database(postgres.url, name)


@pytest.mark.integration
@pytest.mark.postgres
async def test_create_and_drop_database_round_trip(
    postgres: FoundServer, database_name: str
) -> None:
    url = create_database(postgres.url, database_name)

    assert make_url(url).database == database_name
    assert make_url(url).drivername == make_url(postgres.url).drivername
    assert make_url(url).username == make_url(postgres.url).username
    held = await asyncpg.connect(asyncpg_dsn(url))
    assert await held.fetchval("SELECT current_database()") == database_name
    await held.execute("CREATE TABLE leftover (id int)")

    # Creating again drops the old one, even with a session still connected.
    assert create_database(postgres.url, database_name) == url
    fresh = await asyncpg.connect(asyncpg_dsn(url))
    try:
        assert await fresh.fetchval("SELECT to_regclass('leftover')") is None
    finally:
        await fresh.close()
    assert held.is_closed() or not await _still_usable(held)

    drop_database(postgres.url, database_name)
    drop_database(postgres.url, database_name)  # dropping a missing database is fine
    admin = await asyncpg.connect(asyncpg_dsn(postgres.url))
    try:
        query = "SELECT count(*) FROM pg_database WHERE datname = $1"
        assert await admin.fetchval(query, database_name) == 0
    finally:
        await admin.close()


async def _still_usable(connection: asyncpg.Connection) -> bool:
    try:
        await connection.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    finally:
        connection.terminate()
    return True


@pytest.mark.integration
@pytest.mark.postgres
async def test_create_database_from_a_template(postgres: FoundServer, database_name: str) -> None:
    template_url = create_database(postgres.url, database_name)
    connection = await asyncpg.connect(asyncpg_dsn(template_url))
    try:
        await connection.execute("CREATE TABLE migrated (id int)")
    finally:
        await connection.close()
    copy = f"{database_name}_copy"
    try:
        copy_url = create_database(postgres.url, copy, template=database_name)
        connection = await asyncpg.connect(asyncpg_dsn(copy_url))
        try:
            assert await connection.fetchval("SELECT to_regclass('migrated')::text") == "migrated"
        finally:
            await connection.close()
    finally:
        drop_database(postgres.url, copy)


@pytest.mark.parametrize("name", ["", "1abc", "a-b", 'x"; DROP DATABASE y; --', "a" * 64])
def test_database_names_are_validated_before_any_io(name: str) -> None:
    with pytest.raises(ValueError, match="database name"):
        create_database(f"postgresql+asyncpg://u@127.0.0.1:{closed_port()}/postgres", name)


def test_refuses_to_drop_the_admin_database() -> None:
    with pytest.raises(ValueError, match="admin URL"):
        drop_database("postgresql+asyncpg://u@127.0.0.1:1/postgres", "postgres")


# --- throwaway servers ----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    from lionagi_qe.testing import servers, throwaway

    kind, how = sys.argv[1], sys.argv[2]
    if how == "find":  # nothing else reachable: the search must fall through to a throwaway
        closed = int(sys.argv[3])
        servers._COMPOSE_POSTGRES_URL = f"postgresql+asyncpg://u@127.0.0.1:{closed}/d"
        servers._COMPOSE_REDIS_URL = f"redis://127.0.0.1:{closed}/0"
        servers._LOCAL_POSTGRES = ("127.0.0.1", closed, "postgres")
        servers._LOCAL_REDIS_URL = f"redis://127.0.0.1:{closed}/0"
        found = servers.find_postgres() if kind == "postgres" else servers.find_redis()
    else:
        if kind == "postgres":
            found = throwaway.start_throwaway_postgres()
        else:
            found = throwaway.start_throwaway_redis()
    print(json.dumps([found.url, found.source]), flush=True)
    sys.stdin.readline()  # hold the server until the test lets go
    """
)


def _have_binaries(kind: str) -> bool:
    if kind == "redis":
        return shutil.which("redis-server") is not None
    try:
        throwaway._postgres_bin_dir()
    except servers._StartError:
        return False
    return True


async def _use_server(kind: str, url: str) -> None:
    if kind == "postgres":
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await connection.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
            assert await connection.fetchval("SELECT count(*) FROM t") == 1
            assert await connection.fetchval("SHOW max_connections") == "200"
            assert await connection.fetchval("SHOW fsync") == "off"
        finally:
            await connection.close()
    else:
        client = redis.Redis.from_url(url)
        try:
            assert client.set("k", "v") is True
            assert client.get("k") == b"v"
            assert client.config_get("save")["save"] == ""
        finally:
            client.close()


def _spawn_child(kind: str, mode: list[str], cwd: Path) -> subprocess.Popen[str]:
    python_path = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, python_path))}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, *mode],
        env=env,  # AQE_TEST_SERVERS_DIR comes from the test's monkeypatch
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _answer(child: subprocess.Popen[str]) -> list[str]:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, child.stderr.read() if child.stderr else "child printed nothing"
    answer: list[str] = json.loads(line)
    return answer


def _let_go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(timeout=60) == 0, child.stderr.read() if child.stderr else ""


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("last_user", ["starter", "child"])
@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_throwaway_server_is_shared_and_stopped_by_its_last_user(
    kind: str, last_user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _have_binaries(kind):
        pytest.skip(f"no {kind} server binaries installed here")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    monkeypatch.setenv("AQE_TEST_SERVERS_DIR", str(state_dir))
    monkeypatch.delenv("AQE_TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("AQE_TEST_REDIS_URL", raising=False)
    # A state file left by a killed run, pointing at a server that is gone.
    stale = tmp_path / "stale-server"
    stale.mkdir()
    dead_url = (
        f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/postgres"
        if kind == "postgres"
        else f"redis://127.0.0.1:{closed_port()}/0"
    )
    stale_state = {"url": dead_url, "base_dir": str(stale), "users": [2**22 + 1]}
    state_file = state_dir / f"{kind}.json"
    state_file.write_text(json.dumps(stale_state))
    check = check_postgres if kind == "postgres" else check_redis

    found = (
        throwaway.start_throwaway_postgres()
        if kind == "postgres"
        else throwaway.start_throwaway_redis()
    )
    # A user that died without releasing it must not keep the server alive.
    joined = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**joined, "users": [*joined["users"], 2**22 + 2]}))
    children = [
        _spawn_child(kind, ["start"], tmp_path),
        _spawn_child(kind, ["find", str(closed_port())], tmp_path),
    ]
    try:
        assert found.source == "throwaway"
        assert found.url != dead_url
        assert not stale.exists(), "the stale server's directory is cleaned up"
        assert [_answer(child) for child in children] == [[found.url, "throwaway"]] * 2
        state = json.loads(state_file.read_text())
        assert sorted(state["users"]) == sorted([os.getpid(), *(c.pid for c in children)])
        asyncio.run(_use_server(kind, found.url))

        if last_user == "starter":
            for child in children:
                _let_go(child)
                assert check(found.url) is None, "this process still uses it"
            throwaway.release_throwaway(found)
        else:
            throwaway.release_throwaway(found)
            throwaway.release_throwaway(found)  # a second release is a no-op
            assert check(found.url) is None, "the children still use it"
            children[0].kill()  # a crashed worker never releases its reference
            children[0].wait()
            assert check(found.url) is None, "one child still uses it"
            _let_go(children[1])
        assert check(found.url) is not None, "the last user stopped it"
        assert not state_file.exists()
        assert not Path(state["base_dir"]).exists()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        throwaway.release_throwaway(found)


def test_stop_throwaway_servers_without_servers_is_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AQE_TEST_SERVERS_DIR", str(tmp_path))
    # Servers this worker holds for other tests (the shared replica pair) are not this test's
    # to stop: a forced stop would take them from every other worker too.
    monkeypatch.setattr(throwaway, "_held", {})

    throwaway.stop_throwaway_servers(force=True)
    throwaway.release_throwaway(FoundServer("redis://127.0.0.1:1/0", "throwaway"))

    assert sorted(path.name for path in tmp_path.iterdir()) == ["postgres.lock", "redis.lock"]
