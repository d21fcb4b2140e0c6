"""The verifier process's instance id (`ClaimRequest.instance`): which of the verifier
processes sharing one verifier key made a claim, so that a restarting one takes back (`POST
/v1/verification/resume`) only its own claims, never those a sibling replica is judging.

Chosen: stable per replica, not random per start. A random id per start cannot resume
anything (the restarted process would name a new instance and its claims would wait out the
coordinator's claim TTL, the delay resume exists to avoid). So the id is, in order:

  1. `instance_id` from the verifier config (or SWARMRL_VERIFIER_INSTANCE_ID): an operator's
     stable replica name (a StatefulSet pod name, say);
  2. else `<hostname>.<token>`, the token a random one kept in `<data_dir>/instance_id`, made
     at the first start and read at every later one.

The hostname tells apart replicas that share a data folder on different hosts or containers
(`docker compose --scale` over one named volume: each container has its own hostname, stable
across its restarts); the token tells apart processes on one host with their own data folders.
A container or process restarted keeps both (a Kubernetes pod keeps its name and its emptyDir
across container restarts). Two processes on one host sharing one data folder would share an id:
give each its own `data_dir` (they would also share the port file and the seen ledger) or its own
`instance_id`. A replica moved elsewhere (a new pod) gets a new id: its old claims wait out the
TTL, as any other verifier's would.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

from protocol.envelope import IDENT_CHARS
from protocol.messages import MAX_ID_CHARS
from verifier.errors import SetupError

FILE_NAME = "instance_id"
_NOT_ID = re.compile(rf"[^{IDENT_CHARS}]")   # outside protocol.messages.Ident's alphabet
_HOST_CHARS = 64
TOKEN_CHARS = 16


def resolve(configured: str, data_dir: Path) -> str:
    """The configured id if any, else `<hostname>.<token of data_dir>` (module docstring)."""
    if configured:
        return configured
    host = _NOT_ID.sub("-", socket.gethostname())[:_HOST_CHARS] or "host"
    return f"{host}.{_token(Path(data_dir))}"[:MAX_ID_CHARS]


def _token(data_dir: Path) -> str:
    """The token kept in `data_dir/instance_id`, made at the first start. Created with a hard
    link from a written temporary file, so two processes starting at once over one folder read
    the same complete token (the second link fails; it reads the first one's)."""
    path = data_dir / FILE_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = data_dir / f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            tmp.write_text(secrets.token_hex(TOKEN_CHARS // 2) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    with open(path, errors="replace") as f:
        text = f.read(4 * TOKEN_CHARS)   # a token is TOKEN_CHARS long: never read a whole stray file
    token = _NOT_ID.sub("", text.strip())[:TOKEN_CHARS]
    if not token:
        raise SetupError(f"{path} holds no instance token: delete it (a new one is made) or set instance_id")
    return token
