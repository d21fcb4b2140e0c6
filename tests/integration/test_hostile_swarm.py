"""The operator's side survives hostile workers, relays and peers (issue 18), shown on a whole swarm.

A local swarm (swarmrl.swarm: coordinator, trainer with its origin, relay, verifier, honest
workers; real processes on 127.0.0.1, the files an operator would write) runs a task whose
scorer `eval`s worker text (tests/hostile/scoring.eval_scorer, as reasoning-gym's do). Once it
has published versions and accepted honest work, the attackers of tests/hostile/campaign.py
join: the eval-payload worker, a drip relay and a gzip-bomb relay (in a worker's and the
verifier's `relays`, and advertised over libp2p), a flood of unsigned 4 MB bodies, slowloris
connections to the coordinator and the relay, an advert flood from throw-away keys, a
rejected-submission spammer, and lease squatters (throw-away identities that take every lease
they may and never submit). The test checks the state transitions the issue asks for:

- the run keeps publishing versions and accepting honest rollouts, every role stays up, and
  the honest workers fetch new versions through their hostile relay lists;
- the coordinator's memory stays bounded (RSS from /proc, with and without its children);
- no payload wrote its marker file, connected to the canary port or read the key it aimed at
  (the key file is world-readable, so only the sandbox stands in the way; a read would score
  0.1), and the key's secret is in no answer the attackers got, no public view and no file the
  run wrote;
- nothing verified is lost: every submission the verifier accepted is in the training buffer,
  consumed by the trainer, or dropped as stale or for a ban; what the trainer trained was
  consumed; nothing accepted is in limbo.

`test_hostile_swarm_every_attacker` (slow, ~2.5 min here) runs all of them for at least 40 s
of attack; the default-suite test runs four at once (eval payload, gzip-bomb relay, 4 MB flood,
slowloris) for a few versions (~1.5 min on this shared 2-core machine; the drip relay, which
costs each victim one minimum-rate window at first contact, and the lease squatters, who keep
the payload worker's throw-away identities from leases for their first minute, are left to
the slow test).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from protocol.identity import KeyPair
from protocol.lm import load_tokenizer
from swarmrl.procs import ProcessGroup
from swarmrl.swarm import plan_swarm, start_swarm
from tests.hostile.campaign import ALL, HIDDEN, Campaign, HostileRelays, Targets, build_model, swarm_settings
from tests.hostile.watch import RssSampler
from tests.waiting import wait_until

MiB = 1024 * 1024
# The coordinator's RSS under attack may exceed its peak before the attack by this much: the
# payload and spam identities, their leases and submissions are real rows and requests. Bodies
# held in memory would not fit: one wave of the flood is 16 x 4 MB.
RSS_MARGIN = 64 * MiB
RSS_GROWTH = 32 * MiB   # ... and grow by at most this from the first half of a long attack to the second
STEADY_S = 5.0


@pytest.fixture
def root(tmp_path):
    """A short run folder (the payloads name paths in it, and leases bound their length) that
    the sandbox's unprivileged user could traverse: only the sandbox stands in the payloads' way.
    Its logs are copied to tmp_path/logs at the end."""
    d = Path(f"/tmp/hs{secrets.token_hex(4)}")
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        if (d / "logs").is_dir():
            shutil.copytree(d / "logs", tmp_path / "logs", dirs_exist_ok=True)
        shutil.rmtree(d, ignore_errors=True)


class Canary:
    """A TCP listener on 127.0.0.1 that records every connection (no payload may make one)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except (TimeoutError, OSError):
                pass

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _get(url: str) -> dict:
    try:
        r = httpx.get(url, timeout=10)
        return r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def _workers(plan, st: dict) -> dict[str, dict]:
    """The honest workers' rows of /v1/stats, by name."""
    names = {KeyPair.load(plan.root / n / "worker.key").peer_id: n
             for n in plan.worker_names if (plan.root / n / "worker.key").exists()}
    return {names[w["worker_id"]]: w for w in st.get("workers", []) if w["worker_id"] in names}


def _progress(plan) -> tuple[int, dict[str, dict]]:
    st = _get(plan.coordinator_url + "/v1/stats")
    return (st.get("policy") or {}).get("current_version") or 0, _workers(plan, st)


def run_hostile_swarm(tmp_path: Path, root: Path, *, honest_workers: int, attacks: tuple[str, ...],
                      attack_versions: int, min_attack_s: float) -> None:
    model = build_model(tmp_path / "model")
    relays = HostileRelays().start()
    canary = Canary()
    try:
        plan = plan_swarm(root, model, swarm_settings(honest_workers, relays, attacks=attacks))
        relays.follow(plan.relay_url)
        key_file = plan.root / "keys" / "coordinator.key"
        open_dir = plan.root / "open"
        open_dir.mkdir()
        open_dir.chmod(0o777)      # anyone may write here: again only the sandbox stands in the way
        targets = Targets(marker=open_dir / "m", key_file=key_file, canary_port=canary.port)
        with ProcessGroup(plan.logs) as group:
            start_swarm(plan, group)
            pids = {n: group.get(n).popen.pid for n in ("coordinator", "verifier", "relay")}
            with RssSampler(pids, every_s=0.5) as rss:
                # -- clean: versions come and every honest worker has work accepted
                def clean():
                    v, w = _progress(plan)
                    ok = v >= 2 and len(w) == honest_workers and all(x["accepted"] > 0 for x in w.values())
                    return (v, w) if ok else None

                v0, w0 = wait_until(clean, 240, "versions >= 2 and honest work accepted", every=0.5, group=group)
                time.sleep(STEADY_S)  # the services' memory after their first versions is the baseline
                # Once the coordinator has read it (it refuses to start with a key others may read),
                # its key becomes world-readable: not file permissions, only the sandbox may keep
                # the payloads from it.
                key_file.chmod(0o644)
                key_file.parent.chmod(0o755)
                before_attack = time.monotonic()
                peak_clean = {n: (rss.peak(n), rss.peak(n, tree=True)) for n in pids}

                # -- under attack
                tok = load_tokenizer(str(model))
                with Campaign.against(plan, relays, tok, hidden_size=HIDDEN, targets=targets,
                                      attacks=attacks) as attack:
                    def attacked():
                        v, w = _progress(plan)
                        done = (v >= v0 + attack_versions and time.monotonic() - before_attack >= min_attack_s
                                and all(w[n]["accepted"] > w0[n]["accepted"] for n in w0)
                                and all((w[n].get("policy_version") or 0) > v0 for n in w0)
                                and ("payload" not in attacks or len(attack.payload.submitted) >= 3)
                                and ("spam" not in attacks or len(attack.spam.submitted) >= 2))
                        return (v, w) if done else None

                    v1, w1 = wait_until(attacked, 300, f"{attack_versions} versions and honest work under attack",
                                        every=0.5, group=group)
                summary = {**attack.summary(), "relay_hits": relays.hits()}
                peak_attack = {n: (rss.peak(n, since=before_attack), rss.peak(n, tree=True, since=before_attack))
                               for n in pids}
                halfway = before_attack + summary["seconds"] / 2
                halves = [rss.peak("coordinator", since=before_attack, until=halfway),
                          rss.peak("coordinator", since=halfway)]
            report = json.dumps({"summary": summary, "versions": [v0, v1], "rss_clean": peak_clean,
                                 "rss_attack": peak_attack, "coordinator_halves": halves}, default=str)
            print(report)
            _check_attackers(summary, attacks, plan)
            # every role is still up; memory stayed bounded
            assert all(c.alive for c in group.children), report
            own, tree = peak_attack["coordinator"]
            assert own <= peak_clean["coordinator"][0] + RSS_MARGIN, report
            assert tree <= peak_clean["coordinator"][1] + RSS_MARGIN, report
            if summary["seconds"] >= 30:  # a long attack: it does not keep growing
                assert halves[1] <= halves[0] + RSS_GROWTH, report
            # the payloads reached nothing
            assert not targets.marker.exists()
            assert canary.accepted == 0
            _check_no_key_leak(plan, key_file, attack)
            # drain: no new work, let the verifier judge what is queued, then stop every role
            for n in plan.worker_names:
                group.stop(n)
            wait_until(lambda: not (_get(plan.coordinator_url + "/v1/stats").get("submissions") or {}).get("queued"),
                       120, "the verification queue drained (every verdict recorded)", every=0.5, group=group)
        _check_payload_rewards(plan, attack)
        _check_nothing_verified_lost(plan)
    finally:
        canary.close()
        relays.stop()


def _check_attackers(summary: dict, attacks: tuple[str, ...], plan) -> None:
    """Each attacker really attacked, and was answered as the defences say."""
    assert not [e for e in summary["errors"] if "Timeout" in e], summary
    hits = summary["relay_hits"]
    for name in ("drip", "gzip"):  # the victims really tried the hostile relays in their configs
        assert name not in attacks or hits[name] > 0, summary
    if "flood" in attacks:
        answers = summary["flood_answers"]
        assert summary["flood_waves"] >= 1 and sum(answers.values()) > 0, summary
        assert not [k for k in answers if k.isdigit() and int(k) < 400], summary   # nothing accepted
    if "slowloris" in attacks:
        for key, s in summary["slowloris"].items():
            deadline = 30.0 if key == "coordinator/body" else 10.0  # the defaults of both servers
            if summary["seconds"] > deadline + 5:
                assert s["closed_by_server"] > 0, (key, summary)
            if s["longest_s"] is not None:
                assert s["longest_s"] <= deadline + 5, (key, summary)
    if "squat" in attacks:   # the squatters really held leases (a share of the bound: the run went on)
        assert summary["squat"]["most_held"] > 0, summary
    if "adverts" in attacks and plan.p2p_bootstrap:
        assert summary["advert_rounds"] >= 1, summary
        assert hits["advert_drip"] + hits["advert_gzip"] > 0, summary  # adverts reached a victim


def _secret_forms(key_file: Path) -> list[bytes]:
    seed = json.loads(key_file.read_text())["private_seed"]
    raw = bytes.fromhex(seed)
    return [seed.encode(), seed.upper().encode(), raw]


def _check_no_key_leak(plan, key_file: Path, attack: Campaign) -> None:
    forms = _secret_forms(key_file)
    seen = [b for s in (attack.payload, attack.spam) if s is not None for b in s.seen]
    public = [httpx.get(plan.coordinator_url + p, timeout=10).content
              for p in ("/v1/stats", "/metrics", "/v1/dashboard/overview", "/v1/run")]
    for blob in seen + public:
        assert not any(f in blob for f in forms), "the coordinator's key secret reached an attacker"
    keys = plan.root / "keys"
    # The run goes on while this walks it: files and whole folders (a version being written, an
    # old one pruned) vanish meanwhile; os.walk skips a folder it cannot list, rglob raised.
    for folder, _dirs, files in os.walk(plan.root):
        if Path(folder) == keys or keys in Path(folder).parents:
            continue
        for name in files:
            path = Path(folder) / name
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                continue
            assert not any(f in data for f in forms), f"the coordinator's key secret is in {path}"


def _db(plan) -> sqlite3.Connection:
    db = next((plan.root / "coordinator").glob("*.db"))
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _check_payload_rewards(plan, attack: Campaign) -> None:
    """Every payload was scored 0: a read key or a connection would have scored 0.1."""
    if attack.payload is None:
        return
    with _db(plan) as conn:
        ids = attack.payload.submitted
        rows = conn.execute(f"SELECT rewards FROM submissions WHERE submission_id IN ({','.join('?' * len(ids))})",
                            ids).fetchall()
    assert len(rows) == len(ids) >= 3
    assert all(set(json.loads(r)) == {0.0} for (r,) in rows), rows


def _check_nothing_verified_lost(plan) -> None:
    accepted = set(re.findall(r"submission (s-[0-9a-f]+) of \S+ accepted", (plan.logs / "verifier.log").read_text()))
    assert accepted
    with _db(plan) as conn:
        rows = {sid: (status, buf, worker) for sid, status, buf, worker in conn.execute(
            "SELECT submission_id, status, buffer, worker_id FROM submissions")}
        banned = {w for (w,) in conn.execute("SELECT worker_id FROM workers WHERE status = 'banned'")}
    lost = [sid for sid in accepted if sid not in rows or rows[sid][0] not in ("accepted", "dropped")]
    assert not lost, f"accepted by the verifier but not recorded so: {lost[:5]}"
    for sid, (status, buf, worker) in rows.items():
        if status == "accepted":
            assert buf in ("held", "ready", "handed", "consumed", "stale"), (sid, status, buf)
        elif status == "dropped":
            assert buf == "dropped" and worker in banned, (sid, status, buf)
    consumed = {sid for sid, (_, buf, _) in rows.items() if buf == "consumed"}
    trained: set[str] = set()
    for state in (plan.root / "trainer").rglob("state.json"):
        trained |= {sid for sid, _ in json.loads(state.read_text()).get("trained", [])}
    assert trained and trained <= consumed, sorted(trained - consumed)[:5]


def test_hostile_swarm_payload_gzip_relay_flood_and_slowloris_at_once(tmp_path, root):
    run_hostile_swarm(tmp_path, root, honest_workers=1, attacks=("payload", "gzip", "flood", "slowloris"),
                      attack_versions=3, min_attack_s=12.0)


@pytest.mark.slow
def test_hostile_swarm_every_attacker(tmp_path, root):
    run_hostile_swarm(tmp_path, root, honest_workers=2, attacks=ALL, attack_versions=6, min_attack_s=40.0)
