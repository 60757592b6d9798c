"""A throw-away PostgreSQL 16 + pgvector server for tests and benchmarks (pytest plugin).

The binaries come from the ``pgserver`` wheel (``pgserver/pginstall/bin``; it ships pgvector and
runs offline). ``LocalPostgres`` runs ``initdb`` in a temporary directory and starts the server
on 127.0.0.1, TCP only, on a free port; ``stop()`` shuts it down and deletes the directory.
PostgreSQL refuses to run as root, so as root the server runs as the system user
``dicomvec-pg`` (created with ``useradd`` when missing; ``nobody`` as a fallback); when that
user cannot reach the wheel's directory, a private copy of the binaries in a temp dir is used.

Fixture ``postgres_server`` (session scope) yields a started ``LocalPostgres``. It skips, with
the reason, only when the binaries cannot run at all; with ``CI=true`` it fails instead.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

import pytest

SERVICE_USER = "dicomvec-pg"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or cannot run on this machine."""


def pg_bin_dir() -> Path:
    """``pgserver``'s bundled ``bin`` directory (found without importing the package)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable("the pgserver package is not installed "
                                  "(pip install -e '.[test]')")
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise PostgresUnavailable(f"no postgres binary in {bin_dir}")
    return bin_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_user() -> Optional[pwd.struct_passwd]:
    """The account to run the server as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd:
        subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=False, capture_output=True, timeout=30)
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            pass
    return pwd.getpwnam("nobody")


class LocalPostgres:
    """One private PostgreSQL server. ``durable=False`` turns fsync off (tests only)."""

    def __init__(self, durable: bool = False):
        self.bin_dir = pg_bin_dir()
        self.durable = durable
        self.user = service_user()
        self.tmp: Optional[Path] = None
        self.install_copy: Optional[Path] = None
        self.port: Optional[int] = None
        self.superuser = "postgres"

    # -- helpers ---------------------------------------------------------------------------
    def _run(self, args: List[str], timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C",
               "HOME": str(self.tmp)}
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], env=env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              **kwargs)

    def check_runnable(self) -> None:
        """Raise PostgresUnavailable when the binary cannot even print its version."""
        try:
            result = subprocess.run([str(self.bin_dir / "postgres"), "--version"],
                                    capture_output=True, text=True, timeout=30)
        except OSError as exc:
            raise PostgresUnavailable(f"cannot execute {self.bin_dir / 'postgres'}: {exc}")
        if result.returncode != 0 or "PostgreSQL" not in result.stdout:
            raise PostgresUnavailable(f"{self.bin_dir / 'postgres'} --version failed: "
                                      f"{result.stderr.strip() or result.stdout.strip()}")

    def _service_user_can_run(self) -> bool:
        if self.user is None:
            return True
        try:
            result = subprocess.run([str(self.bin_dir / "postgres"), "--version"],
                                    capture_output=True, text=True, timeout=30,
                                    user=self.user.pw_uid, group=self.user.pw_gid,
                                    extra_groups=[], cwd="/")
        except OSError:
            return False
        return result.returncode == 0

    def _ensure_service_user_can_run(self) -> None:
        """The wheel may sit under a directory the service user cannot enter (a venv below
        /root): then run a private copy of its ``pginstall`` (34 MB) and ``pgserver.libs``
        from a temp dir."""
        if self._service_user_can_run():
            return
        self.install_copy = Path(tempfile.mkdtemp(prefix="dicomvec-pginstall-"))
        self.install_copy.chmod(0o755)
        package = self.bin_dir.parent.parent  # .../site-packages/pgserver
        shutil.copytree(package / "pginstall", self.install_copy / "pgserver" / "pginstall",
                        symlinks=True)
        libs = package.parent / "pgserver.libs"  # the binaries' RPATH: $ORIGIN/../../../
        if libs.is_dir():
            shutil.copytree(libs, self.install_copy / "pgserver.libs", symlinks=True)
        self.bin_dir = self.install_copy / "pgserver" / "pginstall" / "bin"
        if not self._service_user_can_run():
            raise RuntimeError(f"user {self.user.pw_name} cannot run {self.bin_dir / 'postgres'}")

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def log_file(self) -> Path:
        return self.tmp / "server.log"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "LocalPostgres":
        """initdb + pg_ctl start; on any failure everything made so far is removed."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "LocalPostgres":
        self.check_runnable()
        self._ensure_service_user_can_run()
        self.tmp = Path(tempfile.mkdtemp(prefix="dicomvec-pg-"))
        if self.user is not None:
            os.chown(self.tmp, self.user.pw_uid, self.user.pw_gid)
        init = self._run(["initdb", "-D", str(self.data_dir), "-U", self.superuser,
                          "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"])
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        options = ["-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''",
                   "-c max_connections=40", "-c shared_buffers=128MB"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        last_error = ""
        for _ in range(3):  # the free port may be taken between probe and bind: try another
            self.port = free_port()
            started = self._run(["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                                 "-w", "-t", "60", "-o", " ".join([f"-p {self.port}", *options]),
                                 "start"])
            if started.returncode == 0:
                return self
            last_error = self.log_file.read_text(errors="replace")[-2000:] \
                if self.log_file.exists() else started.stderr
        raise RuntimeError(f"PostgreSQL did not start: {last_error.strip()}")

    def stop(self) -> None:
        if self.tmp is not None:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(["pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60",
                           "stop"])
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self.install_copy is not None:
            shutil.rmtree(self.install_copy, ignore_errors=True)
            self.install_copy = None

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for the dicomvec sink (trust auth: no password)."""
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def add_password_role(self, name: str, password: str) -> str:
        """A LOGIN role that must give ``password`` (scram-sha-256; every other role keeps
        trust auth). Returns its URL without the password."""
        hba = self.data_dir / "pg_hba.conf"
        line = f"host all {name} 127.0.0.1/32 scram-sha-256\n"
        text = hba.read_text()
        if line not in text:
            hba.write_text(line + text)
        with self.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  [name]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(f"{verb} ROLE {name} LOGIN PASSWORD '{password}'")
            conn.execute("SELECT pg_reload_conf()")
        return f"postgresql://{name}@127.0.0.1:{self.port}/postgres"

    def admin(self, database: str = "postgres"):
        """An autocommit superuser connection (for terminating backends and checks)."""
        import psycopg
        return psycopg.connect(self.url(database), autocommit=True)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_server():
    """A running ``LocalPostgres`` for the whole session (fsync off)."""
    try:
        server = LocalPostgres(durable=False).start()
    except PostgresUnavailable as exc:
        if _in_ci():
            pytest.fail(f"PostgreSQL is required in CI but cannot run: {exc}")
        pytest.skip(f"PostgreSQL binaries cannot run here: {exc}")
    try:
        yield server
    finally:
        server.stop()
