"""The worker daemon's main loop: join, lease, sync, generate, prove, spool, submit.

    Daemon.run()
      GET /v1/run -> register (signed Registration + HardwareReport [+ proof of work])
      start: status server, policy downloader (shardcast), housekeeping (heartbeats, verdicts)
      start: background sender (worker.sender: sends the spool, and what a previous run left)
      loop until stopped:
        lease a batch            (POST /v1/leases; each lease's coordinator signature checked),
                                 or take the one leased ahead
        lease the next batch ahead, in the background, while this one generates
                                 (worker.hardware.lease_ahead_tasks, lease_ahead_delay: halfway
                                 through the batch, and only what can still finish
                                 within two thirds of its TTL after this batch)
        for each version plan    (worker.leases.plan: newest ready version the leases allow)
          load it into the engine, generate every seed of the leases in one batch,
          build proofs, spool each submission (fsync) and kick the sender

Over a slow link nothing in the loop waits for a round trip while work is at hand: the next
batch's leases arrive while this batch generates, and submissions go out from the sender's
thread (bench/wan.py rollouts). Heartbeats, verdict polling (worker.housekeeping) and policy
downloads (worker.policy_sync) have their own threads. All share one keep-alive HTTP client.

Stopping: the first SIGTERM/SIGINT lets the current generation batch finish and be
submitted, releases every other lease (those leased ahead too) (POST /v1/leases/release) and exits 0; a second
signal aborts the batch at once (its leases are released too). Finished work that could not
be sent stays in the spool for the next start. A ban from the coordinator ends the daemon
with its reason. The engine is passed in (`worker.main.run(cfg, engine=...)`), so tests
and the demo's dishonest worker reuse this loop unchanged.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from protocol import dtypes
from protocol.errors import Rejected, Stopped, Unavailable
from protocol.http import sane_wait, short
from protocol.identity import KeyPair, PublicKey
from protocol.messages import Lease, Registration, RunInfo
from protocol.pow import solve_pow
from protocol.retry import Reachability, retry_call
from worker.config import WorkerConfig
from worker.coordinator_client import CoordinatorClient
from worker.engines.base import Engine
from worker.errors import Banned, PolicyUnavailable, WorkerError
from worker.hardware import (
    hardware_report,
    lease_ahead_delay,
    lease_ahead_tasks,
    sequences_per_batch,
    tasks_per_lease_request,
)
from worker.housekeeping import Housekeeper
from worker.leases import fallback_versions, open_lease, plan
from worker.policy_sync import PolicySync
from worker.registration import Registrations
from worker.rollout import generate_batch
from worker.sender import BackgroundSender
from worker.spool import Spool
from worker.state import WorkerState
from worker.status_server import start_status_server
from worker.submitter import Submitter

log = logging.getLogger(__name__)

IDLE_WAIT_S = 2.0          # no work offered and no retry_after given: ask again after this
MAX_IDLE_WAIT_S = 60.0     # the longest retry_after of an empty lease answer the worker honours
LEASE_REFUSED_WAIT_S = 10.0  # a lease request refused (a 4xx the daemon has no rule for): ask again after this
REGISTER_REFUSED_WAIT_S = 10.0  # a registration refused (not a ban): register again after this
REREGISTER_WAIT_S = 10.0   # forgotten again within this long of registering: wait this long first
LEASE_WAIT_S = 2.0         # a lease request that finds no room may be held this long at the coordinator
SHUTDOWN_SEND_S = 10.0     # on stop, how long to keep trying to send / release
KEEP_VERSIONS = 3          # policy versions kept in the local checkpoint cache
# A wait for a policy version in which no download of any version the lease allows makes
# progress ends after this long: the lease is given back (a hostile coordinator's lease for a
# version no relay will serve, expiring in a day, held the loop a day). A download under way
# (progress after each 50 MB shard, at least one in this long) waits for the lease's expiry as before.
VERSION_WAIT_S = 300.0
MAX_LEASE_TTL_S = 86400.0  # the longest lease lifetime the worker sizes its requests by
MAX_ADVERTISED_RELAYS = 32  # relays taken from GET /v1/run (a random sample of them, if more)
MAX_RELAY_URL_CHARS = 2048


def advertised_relays(urls: list[str]) -> list[str]:
    """The relays a coordinator advertises that the worker will use: http(s) URLs of sane length,
    once each, at most MAX_ADVERTISED_RELAYS (a random sample: workers spread over the relays).
    The list is untrusted: one "ftp://" entry made the shardcast client raise at start-up (the
    daemon exited, again at every restart), and every relay in it is long-polled at once."""
    good, bad = [], 0
    for url in dict.fromkeys(urls):
        if isinstance(url, str) and len(url) <= MAX_RELAY_URL_CHARS and url.startswith(("http://", "https://")) \
                and url.isprintable():
            good.append(url)
        else:
            bad += 1
    if bad:
        log.warning("ignored %d relay URLs the coordinator advertises that are no http(s) URLs", bad)
    if len(good) > MAX_ADVERTISED_RELAYS:
        log.warning("the coordinator advertises %d relays; using %d of them, at random", len(good),
                    MAX_ADVERTISED_RELAYS)
        good = random.sample(good, MAX_ADVERTISED_RELAYS)
    return good


def _vocab_size(checkpoint: Path) -> int | None:
    """`vocab_size` of a checkpoint's config.json (None when it names none)."""
    try:
        v = json.loads((Path(checkpoint) / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return v if type(v) is int and v > 0 else None


def _terms(info: RunInfo) -> tuple[str, str, str]:
    return info.run_id, info.coordinator_key, info.operator_key


def _client_version() -> str:
    try:
        return metadata.version("swarmrl")
    except metadata.PackageNotFoundError:
        return ""


class Daemon:
    def __init__(self, cfg: WorkerConfig, engine: Engine, weights_client: Any = None):
        self.cfg = cfg
        self._weights_client = weights_client  # a ShardcastClient stand-in (tests); None: built from /v1/run
        self.engine = engine
        self.data_dir = Path(cfg.data_dir).expanduser()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = KeyPair.load_or_create(Path(cfg.key_file).expanduser())
        self.worker_id = self.key.peer_id
        self.stop = threading.Event()      # finish the batch, release the rest, exit
        self.abort = threading.Event()     # second signal: stop sending too
        self.state = WorkerState(peer_id=self.worker_id, coordinator_url=cfg.coordinator_url,
                                 engine=engine.info().model_dump(mode="json"))
        self.reach = Reachability(lambda up, err: self.state.set(coordinator_up=up, coordinator_error=err))
        self.coord = CoordinatorClient(cfg.coordinator_url, self.key)
        self.spool = Spool(self.data_dir / "spool")
        self.registrations = Registrations(self._register)  # the loop, lease-ahead and sender threads
        self.submitter = Submitter(self.coord, self.spool, self.state, self.reach, self.worker_id, self.registrations)
        self.sender = BackgroundSender(self.submitter, self.stop)
        self._lease_rtt_s = 0.0            # how long the last lease request took
        self.lease_wait_s = LEASE_WAIT_S     # how long a lease request may be held at the coordinator (0: not)
        self.hw = hardware_report()
        device = engine.info().device or "cpu"
        self.target_sequences = sequences_per_batch(self.hw, device)
        self.held: dict[str, Lease] = {}
        self._held_lock = threading.Lock()
        self.group_size: int | None = None
        self.seconds_per_task: float | None = None
        self.lease_ttl_s: float | None = None
        self.run_info: RunInfo | None = None
        self.banned: str | None = None
        self._joined: tuple[str, str, str] | None = None   # the run joined: id, coordinator key, operator key
        self.run_changed: str | None = None                 # why the daemon ended: the run changed under it
        self.sync: PolicySync | None = None
        self.p2p: Any = None               # the libp2p node (worker.p2p), None: HTTP only
        self.vocab_size: int | None = None  # of the loaded version (its config.json), None: unknown
        self._registered_at = -1e9          # time.monotonic() of the last registration

    # -- lifecycle ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self.stop.is_set():
            log.warning("stopping: finishing the current batch, releasing other leases (signal again to abort)")
            self.state.set(phase="stopping")
        self.stop.set()

    def run(self) -> None:
        status = start_status_server(self.state, self.cfg.status_host, self.cfg.status_port, self.data_dir)
        keeper = None
        shard_client = None
        watch = None
        try:
            log.info("worker %s starting (engine %s, %d sequences per batch, data in %s)", self.worker_id,
                     self.engine.name, self.target_sequences, self.data_dir)
            self.submitter.refresh_counts()
            self._join()
            shard_client = self._shardcast_client()
            if self.p2p is not None:
                from worker.p2p import SwarmWatch

                watch = SwarmWatch(self.p2p, self.state, self.stop)
                watch.start()
            self.sync = PolicySync(shard_client, self.stop, on_progress=self.state.progress,
                                   on_newest=lambda v: self.state.set(newest_version=v))
            self.sync.start()
            keeper = Housekeeper(self.coord, self.spool, self.state, self.worker_id, self.stop,
                                 held_leases=self._held_ids, on_banned=self._banned)
            keeper.start()
            self.sender.start()
            self._loop()
        except Stopped:
            pass
        finally:
            self.stop.set()
            sender_done = self.sender.stop_and_join()
            self._shutdown(flush=sender_done)
            if shard_client is not None:
                shard_client.close()  # aborts a download in progress
            if keeper is not None:
                keeper.join()
            if self.sync is not None:
                self.sync.join()
            if watch is not None:
                watch.join()
            if self.p2p is not None:
                self.p2p.stop()
            status.stop()
            self.coord.close()
        if self.banned:
            raise Banned(f"this worker ({self.worker_id}) is banned by the coordinator: {self.banned}")
        if self.run_changed:
            raise WorkerError(self.run_changed)

    def _banned(self, reason: str) -> None:
        if not self.banned:
            log.error("banned by the coordinator: %s", short(reason))
        self.banned = short(reason)
        self.stop.set()

    # -- joining --------------------------------------------------------------------------------
    def _join(self) -> None:
        self.state.set(phase="joining")
        self.run_info = retry_call(self.coord.run_info, f"reaching the coordinator at {self.cfg.coordinator_url}",
                                   self.stop, reach=self.reach)
        self.cfg.pins.check_run(self.run_info, f"the coordinator at {self.cfg.coordinator_url} (GET /v1/run)")
        self.state.set(run_id=self.run_info.run_id, newest_version=self.run_info.current_policy_version)
        self._agree_dtype(self.run_info.allowed_dtypes)
        self._joined = _terms(self.run_info)
        self.registrations.again(self.registrations.epoch(), self.stop)

    def _same_run(self, info: RunInfo, where: str) -> None:
        """Stop the daemon (Stopped; `run` then raises WorkerError) when `info` describes another
        run than the one joined, or one that no longer allows the engine's dtype. Everything the
        daemon holds is the joined run's: its shardcast client trusts that run's operator key
        (the new run's manifests were refused and its relays marked hostile), its engine computes
        in the dtype agreed then, its leases and spool are that run's. The worker registered into
        the new run and sat idle, refusing its leases, for ever; a new start joins it cleanly
        (and the spool keeps the first run's finished work: worker.spool)."""
        dtype = dtypes.canonical(self.engine.info().dtype)
        allowed = {dtypes.canonical(d) for d in info.allowed_dtypes}
        if self._joined is None or (_terms(info) == self._joined and (dtype is None or dtype in allowed)):
            return
        self.run_changed = (
            f"the coordinator at {self.cfg.coordinator_url} ({where}) now describes run {info.run_id!r} "
            f"(coordinator key {info.coordinator_key[:16]}..., operator key {info.operator_key[:16]}..., dtypes "
            f"{', '.join(info.allowed_dtypes)}), not run {self._joined[0]!r} as this worker joined it "
            f"(computing in {dtype}): start the worker again to join the run it serves now")
        log.error("%s", self.run_changed)
        self.stop.set()
        raise Stopped("stopped: the coordinator's run changed")

    def _agree_dtype(self, allowed: list[str]) -> None:
        """Compute in a dtype the run allows: an 'auto' engine switches to one (bf16 on a GPU when
        allowed, else fp32); a dtype set in the config that the run does not allow is an error."""
        current = dtypes.canonical(self.engine.info().dtype)
        if current in allowed:
            return
        if self.cfg.dtype != "auto":
            raise WorkerError(f"this run allows the compute dtypes {', '.join(allowed)}; the worker is set to "
                              f"{current}: set dtype = \"auto\" or one of those in the worker config")
        chosen = dtypes.pick(allowed, cuda=str(self.engine.info().device).startswith("cuda"))
        self.engine.use_dtype(chosen)
        log.info("computing in %s (the dtypes this run allows: %s)", chosen, ", ".join(allowed))

    def _register(self, stop: threading.Event) -> None:
        """Register; called only through `self.registrations` (once per forgetting), from the
        loop's, the lease-ahead or the sender's thread. A refusal other than a ban (403) is tried
        again, from a fresh GET /v1/run and proof of work, after REGISTER_REFUSED_WAIT_S: it
        raised WorkerError, which ended the daemon from the loop's thread (at every restart while
        it lasted: a worker clock outside the coordinator's skew window, 400 stale) and the
        background sender silently from its own. A ban stops the daemon from any thread."""
        while True:
            # the proof-of-work challenge changes per epoch: solve the current one
            self.run_info = retry_call(self.coord.run_info, f"reaching the coordinator at {self.cfg.coordinator_url}",
                                       stop, reach=self.reach)
            self._same_run(self.run_info, "GET /v1/run")
            info = self.run_info
            nonce = solve_pow(info.pow_challenge, self.key.public.hex, info.pow_difficulty, stop=stop) \
                if info.pow_difficulty else None
            reg = Registration(hardware=self.hw, client_version=_client_version(), engine=self.engine.name,
                               pow_nonce=nonce)
            try:
                resp = retry_call(lambda: self.coord.register(reg), "registering", stop, reach=self.reach)
                break
            except Rejected as exc:
                if exc.status == 403:
                    self._banned(f"the coordinator refuses this worker ({self.worker_id}): {exc.detail}")
                    raise Stopped("stopped: banned") from exc
                log.error("registration refused (HTTP %d%s: %s); trying again in %.0f s", exc.status,
                          f" {exc.reason}" if exc.reason else "", exc.detail, REGISTER_REFUSED_WAIT_S)
                self.state.set(last_error=f"registration refused (HTTP {exc.status}): {exc.detail}"[:300])
                if stop.wait(REGISTER_REFUSED_WAIT_S):
                    raise Stopped("stopped while registering") from exc
        self.cfg.pins.check_run(resp.run, f"the coordinator at {self.cfg.coordinator_url} (registration answer)")
        self._same_run(resp.run, "registration answer")
        self.run_info = resp.run
        self._registered_at = time.monotonic()
        log.info("registered as %s in run %s", short(resp.worker_id, 80), resp.run.run_id)

    def _shardcast_client(self) -> Any:
        if self._weights_client is not None:
            return self._weights_client
        from shardcast.client import ShardcastClient

        assert self.run_info is not None
        operator = PublicKey.from_hex(self.run_info.operator_key)
        cache = self.data_dir / "checkpoints"
        peers = None
        from worker import p2p

        self.p2p = p2p.join(self.cfg, self.key, self.run_info, cache)
        if self.p2p is not None:
            from shardcast.p2p import PeerShards

            peers = PeerShards(self.p2p, operator)
        relays = self.cfg.relays or advertised_relays(self.run_info.relays)
        if not relays and peers is None:
            raise WorkerError("no relay to fetch weights from: the coordinator advertises none; "
                              "pass one with --set relays='[\"http://HOST:PORT\"]'")
        return ShardcastClient(relays, operator, cache, run_id=self.run_info.run_id, keep_versions=KEEP_VERSIONS,
                               peers=peers)

    # -- the loop -------------------------------------------------------------------------------
    def _held_ids(self) -> list[str]:
        with self._held_lock:
            return list(self.held)

    def _hold(self, leases: list[Lease]) -> None:
        with self._held_lock:
            for lease in leases:
                self.held[lease.lease_id] = lease
            self.state.set(leases_active=len(self.held))

    def _unhold(self, lease_ids: list[str]) -> None:
        with self._held_lock:
            for i in lease_ids:
                self.held.pop(i, None)
            self.state.set(leases_active=len(self.held))

    def _loop(self) -> None:
        ahead: Future[list[Lease]] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="lease-ahead") as pool:
            try:
                while not self.stop.is_set():
                    # also while only the leases asked ahead are awaited: a status left at
                    # "generating" would claim work in hand
                    self.state.set(phase="leasing")
                    if ahead is not None:
                        leases, ahead = ahead.result(), None
                    else:
                        leases = self._lease(self._request_size(), wait_if_none=True)
                    if not leases:
                        continue
                    n = lease_ahead_tasks(self._request_size(), len(leases), self.seconds_per_task, self.lease_ttl_s)
                    if n:
                        assert self.seconds_per_task is not None
                        delay = lease_ahead_delay(self.seconds_per_task * len(leases), self._lease_rtt_s)
                        ahead = pool.submit(self._lease_after, delay, n)
                    self._work(leases)
            finally:
                if ahead is not None:
                    # the loop ends only when the daemon stops: end a request still retrying; what it
                    # leased is held and released by _shutdown, and its error (if any) adds nothing
                    self.stop.set()
                    ahead.cancel() or ahead.exception()

    def _request_size(self) -> int:
        return tasks_per_lease_request(self.target_sequences, self.group_size, self.cfg.max_tasks,
                                       self.seconds_per_task, self.lease_ttl_s)

    def _lease_after(self, delay_s: float, n: int) -> list[Lease]:
        """The lease-ahead request, sent `delay_s` into the batch (leases issued later allow
        newer policy versions)."""
        self.stop.wait(delay_s)
        return [] if self.stop.is_set() else self._lease(n, False)

    def _lease(self, n: int, wait_if_none: bool) -> list[Lease]:
        """Lease up to `n` tasks; none offered: wait the coordinator's retry_after first if `wait_if_none`."""
        wait_s = self.lease_wait_s if wait_if_none else 0.0
        try:
            t0, seen = time.monotonic(), self.registrations.epoch()
            resp = retry_call(lambda: self.coord.lease(n, wait_s), "leasing tasks", self.stop, reach=self.reach)
            if not wait_s:   # a held request's time is no round trip
                self._lease_rtt_s = time.monotonic() - t0
        except Rejected as exc:
            if exc.status == 422 and wait_s:
                # a coordinator from before held lease requests refuses the field: ask as before
                log.warning("the coordinator does not hold lease requests (HTTP 422: %s); asking without", exc.detail)
                self.lease_wait_s = 0.0
                return []
            if exc.status == 403:
                self._banned(exc.detail)
                return []
            if exc.status in (401, 404):
                if time.monotonic() - self._registered_at < REREGISTER_WAIT_S:
                    # forgotten again moments after registering: a coordinator answering so every
                    # time made the loop register (GET /v1/run, proof of work, POST) ~225 times a second
                    log.warning("lease refused (HTTP %d: %s) right after registering; registering again in %.0f s",
                                exc.status, exc.detail, REREGISTER_WAIT_S)
                    if self.stop.wait(REREGISTER_WAIT_S):
                        return []
                else:
                    log.warning("lease refused (HTTP %d: %s); registering again", exc.status, exc.detail)
                self.registrations.again(seen, self.stop)
                return []
            # Anything else (a clock outside the skew window: 400 stale; a proxy's 408; whatever a
            # broken coordinator says) ended the daemon, at every restart while it lasted: wait
            # and ask again, the refusal on the status page
            wait = sane_wait(exc.retry_after_s, LEASE_REFUSED_WAIT_S, floor=0.0, cap=MAX_IDLE_WAIT_S)
            log.error("lease request refused (HTTP %d%s: %s); asking again in %.0f s", exc.status,
                      f" {exc.reason}" if exc.reason else "", exc.detail, wait)
            self.state.set(last_error=f"lease request refused (HTTP {exc.status}): {exc.detail}"[:300])
            self.stop.wait(wait)
            return []
        assert self.run_info is not None
        key = PublicKey.from_hex(self.run_info.coordinator_key)
        if len(resp.leases) > n:
            # signed or not, work beyond what was asked is none the worker has shown it can finish
            # in the TTL (and each would cost a signature check): it is left to expire
            log.warning("the coordinator answered a request for %d tasks with %d leases; taking the first %d",
                        n, len(resp.leases), n)
        leases = []
        for env in resp.leases[:n]:
            try:
                leases.append(open_lease(env, key, self.worker_id, self.run_info.run_id, time.time()))
            except WorkerError as exc:
                log.error("%s; ignored", exc)
        if not leases:
            if wait_if_none:
                self.state.set(phase="idle (no work offered)")
                # a request held until its wait ended is answered with retry_after 0: ask again at
                # once; an empty answer that came back quickly is no hold (never a busy loop)
                held = wait_s and time.monotonic() - t0 >= wait_s / 2
                wait = resp.retry_after_s if held else (resp.retry_after_s or IDLE_WAIT_S)
                # the coordinator's number, bounded: 1e308 raised OverflowError out of the loop
                # and 1e9 slept for years
                self.stop.wait(sane_wait(wait, IDLE_WAIT_S, floor=0.0, cap=MAX_IDLE_WAIT_S))
            return []
        self._hold(leases)
        self.group_size = len(leases[0].seeds)
        # the coordinator's times, bounded: issued at -1.7e308 and expiring at 1.7e308 made the
        # TTL infinite, and sizing the next request raised OverflowError out of the loop
        self.lease_ttl_s = min(MAX_LEASE_TTL_S, max(1.0, leases[0].expires_at - leases[0].issued_at))
        return leases

    def _work(self, leases: list[Lease]) -> None:
        """Generate `leases` (the version plan), then give back those of them not generated
        (no version they allow could be fetched, or a stop); leases leased ahead stay held."""
        assert self.sync is not None
        pending = leases
        while pending and not self.stop.is_set():
            ready = set(self.sync.ready())
            if self.engine.version is not None:
                ready.add(self.engine.version)
            p = plan(pending, ready)
            self.sync.want(p.fetch)
            if p.version is None:
                pending = self._wait_for_version(pending)
                continue
            if not self._load(p.version):
                continue
            self._generate(p.now, p.version)
            pending = p.later
        held = set(self._held_ids())
        self._release([lease.lease_id for lease in leases if lease.lease_id in held])

    def _wait_for_version(self, leases: list[Lease]) -> list[Lease]:
        assert self.sync is not None
        now = time.time()
        expired = [lease.lease_id for lease in leases if lease.expires_at <= now]
        if expired:   # as in _generate: nothing to wait for (and no deadline left for the others)
            log.warning("%d leases expired while waiting for a policy version; dropped", len(expired))
            self._unhold(expired)
            leases = [lease for lease in leases if lease.expires_at > now]
            if not leases:
                return []
        newest = max(leases, key=lambda lease: lease.max_policy_version)
        self.state.set(phase=f"syncing policy v{newest.max_policy_version}")
        tried = fallback_versions(newest)
        try:
            self.sync.wait_any(tried, min(lease.expires_at for lease in leases), give_up_s=VERSION_WAIT_S)
        except PolicyUnavailable as exc:
            # given back: the leases that allow only versions tried (the newest one's at least);
            # the others go on to their own wait (a lease for a version no relay serves must not
            # cost the batch's other leases)
            gone = [lease for lease in leases if set(fallback_versions(lease)) <= set(tried)]
            log.error("%s; giving back %d leases", exc, len(gone))
            self.sync.unwant(tried)
            self._release([lease.lease_id for lease in gone])
            return [lease for lease in leases if lease not in gone]
        return leases

    def _load(self, version: int) -> bool:
        """Load `version` into the engine; False if its folder has gone (plan again)."""
        if self.engine.version == version:
            return True
        assert self.sync is not None
        path = self.sync.ready().get(version)  # ready() drops versions whose folder has gone
        if path is None:
            # pruned from the cache since the plan was made: plan again (the version is
            # fetched again if a lease still needs it)
            log.warning("policy version %d left the cache before it was loaded; planning again", version)
            return False
        self.state.set(phase=f"loading policy v{version}")
        t0 = time.perf_counter()
        try:
            self.engine.load(path, version)
        except OSError as exc:
            if path.exists():
                raise
            # pruned while it was being read (new versions every second prune old ones):
            # the same as above; the engine holds no version until a load completes
            log.warning("policy version %d left the cache while it was loaded (%s); planning again", version, exc)
            return False
        self.state.set(policy_version=version)
        self.vocab_size = _vocab_size(path)
        log.info("policy version %d loaded in %.2f s", version, time.perf_counter() - t0)
        return True

    def _runnable(self, leases: list[Lease]) -> list[Lease]:
        """`leases` whose prompts the loaded model can read; the others are given back. A prompt
        token id past the vocabulary (valid to the schema up to 2**31-1) raised IndexError out of
        the engine, past the loop (the daemon ended; on a GPU, a device-side assert spoils the
        CUDA context for good)."""
        if not self.vocab_size:
            return leases
        bad = [lease for lease in leases if max(lease.prompt_token_ids) >= self.vocab_size]
        if bad:
            log.error("%d leases have prompt token ids past the model's vocabulary (%d); given back: %s",
                      len(bad), self.vocab_size, ", ".join(lease.lease_id for lease in bad[:5]))
            self._release([lease.lease_id for lease in bad])
        return [lease for lease in leases if lease not in bad]

    def _generate(self, leases: list[Lease], version: int) -> None:
        per_batch = max(1, self.target_sequences // max(1, self.group_size or 1))
        for i in range(0, len(leases), per_batch):
            if self.stop.is_set():
                return
            chunk = [lease for lease in leases[i: i + per_batch] if lease.expires_at > time.time()]
            expired = [lease.lease_id for lease in leases[i: i + per_batch] if lease.expires_at <= time.time()]
            if expired:
                log.warning("%d leases expired before generation; dropped", len(expired))
                self._unhold(expired)
            chunk = self._runnable(chunk)
            if not chunk:
                continue
            self.state.set(phase=f"generating ({len(chunk)} tasks, v{version})",
                           batch_sequences=sum(len(lease.seeds) for lease in chunk))
            finished, stats = generate_batch(self.engine, chunk, version)
            self.seconds_per_task = (stats.generate_s + stats.proof_s) / len(chunk)
            self.state.record_batch(stats.tokens, stats.generate_s + stats.proof_s)
            self.state.set(phase="spooling")
            for n, f in enumerate(finished):
                try:
                    self.spool.put(f.submission, f.tokens, f.lease.expires_at, run_id=f.lease.run_id)
                except OSError as exc:
                    # a full (or failing) disk: what is spooled stays and is sent, its leases are
                    # no longer held (releasing one would make its submission refused); the
                    # rest of the batch cannot be kept: its leases are released by the shutdown
                    self._unhold([g.lease.lease_id for g in finished[:n]])
                    self.sender.kick()
                    raise WorkerError(
                        f"cannot write finished work to the spool {self.spool.root / 'pending'} ({exc}); "
                        f"{len(finished) - n} finished submissions of this batch are dropped and their leases "
                        f"released, the {n} spooled before are kept and sent; free space there and start "
                        "the worker again") from exc
            self._unhold([f.lease.lease_id for f in finished])
            self.submitter.refresh_counts()
            self.sender.kick()  # sent in the background (after a stop: by _shutdown's flush)
            log.info("generated %d sequences (%d tokens) with v%d in %.2f s (+%.3f s proofs)",
                     stats.sequences, stats.tokens, version, stats.generate_s, stats.proof_s)

    # -- shutdown -------------------------------------------------------------------------------
    def _release(self, lease_ids: list[str]) -> None:
        if not lease_ids:
            return
        stop = self.abort if self.stop.is_set() else self.stop
        try:
            for i in range(0, len(lease_ids), 256):
                part = lease_ids[i: i + 256]
                n = retry_call(lambda: self.coord.release(part), "releasing leases", stop, reach=self.reach,
                               give_up_after_s=SHUTDOWN_SEND_S)
                log.info("released %d of %d leases", n, len(part))
        except (Unavailable, Rejected) as exc:
            log.warning("could not release leases (%s); they return to the pool when they expire", exc)
        except Stopped:
            pass
        self._unhold(lease_ids)

    def _shutdown(self, flush: bool = True) -> None:
        """Send what is spooled (unless the background sender is still stuck in a send: then the
        next start sends it), release every lease still held."""
        self.state.set(phase="stopping")
        try:
            if flush and self.run_info is not None and not self.banned:
                self.submitter.flush(self.abort, give_up_after_s=SHUTDOWN_SEND_S)
        except Stopped:
            pass
        self._release(self._held_ids())
        left = len(self.spool.pending())
        if left:
            log.warning("%d finished submissions stay in %s and will be sent at the next start",
                        left, self.spool.root / "pending")
        log.info("worker stopped")
