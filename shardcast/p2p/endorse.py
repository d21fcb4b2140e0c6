"""`python -m shardcast.p2p.endorse`: the operator endorses a relay for the swarm layer.

    python -m shardcast.p2p.endorse --key keys/operator.key --run-id RUN \\
        --relay-key HEX --url https://relay.example.org:8800 --days 30 > endorsement.json

The relay's key is the one in its `data_dir/relay.key` (the relay logs its hex at start);
the output goes into the relay's config as `endorsement = "endorsement.json"`. Peers then
keep that relay in a table that unendorsed adverts cannot fill, and accept its URL whatever
its address (shardcast.p2p.announcements, shardcast.p2p.view). The key may be the operator's
or the coordinator's (both may announce versions). `load_endorsement` is the relay's side:
it reads the file and refuses one that does not endorse this relay's key and URL.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.identity import KeyPair, PublicKey
from shardcast.p2p.announcements import check_endorsement, endorse_relay
from shardcast.p2p.errors import P2PError, Rejected


def load_endorsement(path: Path, *, run_id: str, relay_key: PublicKey, url: str,
                     endorsers: set[str]) -> Envelope:
    """The endorsement in `path` if it holds for this relay now; P2PError saying why not."""
    try:
        env = Envelope.model_validate_json(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise P2PError(f"cannot read the endorsement {path}: {str(exc)[:200]}") from exc
    try:
        check_endorsement(env, run_id=run_id, relay_key=relay_key.hex, url=url, now=time.time(),
                          endorsers=endorsers)
    except Rejected as exc:
        raise P2PError(f"the endorsement in {path} does not hold for relay key {relay_key.hex} at {url} "
                       f"in run {run_id}: {exc.detail}; ask the operator for a new one") from exc
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shardcast.p2p.endorse", description=__doc__.split("\n\n")[0])
    p.add_argument("--key", type=Path, required=True, help="the operator's (or coordinator's) key file")
    p.add_argument("--run-id", required=True)
    p.add_argument("--relay-key", required=True, help="the relay's public key, hex (logged by the relay)")
    p.add_argument("--url", required=True, help="the relay's public URL, scheme://host[:port]")
    p.add_argument("--days", type=float, default=30.0, help="how long the endorsement holds")
    a = p.parse_args(argv)
    try:
        env = endorse_relay(KeyPair.load(a.key), run_id=a.run_id, relay_key=PublicKey.from_hex(a.relay_key),
                            url=a.url, valid_for_s=a.days * 86400)
    except (ProtocolError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(env.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
