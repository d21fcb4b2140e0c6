"""A throwaway PostgreSQL cluster on a Unix socket, for tests, benchmarks and local trials.

`TempPostgres(folder).start()` runs `initdb` and `postgres` from the Debian packages
(/usr/lib/postgresql/<version>/bin), as the `postgres` user when this process is root (the
server refuses to run as root), listening only on a Unix socket in `folder` — nothing is
exposed on the network. `url` is the SQLAlchemy URL of database `swarmrl`; `stop()` shuts it
down. `find_bin()` returns None when PostgreSQL is not installed (callers skip or install it:
`apt-get install -y postgresql`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def find_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class TempPostgres:
    """`folder=None` makes a fresh folder under /tmp: the `postgres` user must be able to
    reach it (pytest's tmp folders are private to root) and socket paths must stay short."""

    def __init__(self, folder: Path | None = None, port: int = 5432):
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="swarmrl-pg-"))
        self.folder = Path(folder).resolve()
        self.port = port
        self.bin = find_bin()
        self.proc: subprocess.Popen | None = None

    def _as_postgres(self, args: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/swarmrl?host={self.folder}&port={self.port}"

    def start(self, timeout_s: float = 60.0) -> TempPostgres:
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        data = self.folder / "data"
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        r = subprocess.run(self._as_postgres([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres",
                                              "--auth=trust", "-E", "UTF8", "--no-sync"]), capture_output=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {(r.stderr or r.stdout).decode(errors='replace')[-500:]}")
        log = open(self.folder / "postgres.log", "ab")
        self.proc = subprocess.Popen(self._as_postgres([
            str(self.bin / "postgres"), "-D", str(data), "-k", str(self.folder), "-p", str(self.port),
            "-c", "listen_addresses=", "-c", "max_connections=200", "-c", "shared_buffers=256MB"]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            r = subprocess.run([str(self.bin / "pg_isready"), "-h", str(self.folder), "-p", str(self.port)],
                               capture_output=True, check=False)
            if r.returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {(self.folder / 'postgres.log').read_text()[-1000:]}")
            time.sleep(0.1)
        subprocess.run(self._as_postgres([str(self.bin / "createdb"), "-h", str(self.folder), "-p", str(self.port),
                                          "-U", "postgres", "swarmrl"]), check=True, capture_output=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # smart shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
