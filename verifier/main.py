"""`swarmrl verifier`: join the run, keep policy versions at hand, judge submissions for ever.

Start-up: key (created if missing; its public key must be among the coordinator's
verifier_keys), GET /v1/run (retried until the coordinator answers), a shardcast client on
the run's relays (or `cfg.relays`) trusting only the operator key, the tokenizer from the
first policy version (else `cfg.tokenizer`; never the coordinator's `tokenizer_ref`), /health
and /metrics on `cfg.host:cfg.port` (port 0: a free port, written to
`<data_dir>/verifier.port`), the prefetch thread, then the work loop
(`verifier.service`). SIGINT/SIGTERM stop it after the verdict in hand.

With the libp2p swarm layer (`cfg.p2p`, libp2p installed, a bootstrap peer from the config or
from GET /v1/run), the shardcast clients also hear versions and relays on the run's topic
and fetch shards from peers when relays fail (shardcast.p2p.roles.join_run); otherwise
HTTP only, as before.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from verifier.config import VerifierConfig

log = logging.getLogger("swarmrl.verifier")


def run(cfg: VerifierConfig, stop: threading.Event | None = None) -> None:
    import torch

    from protocol.http import ServerThread, SignedClient, write_port_file
    from protocol.identity import KeyPair, PublicKey
    from shardcast.client import ShardcastClient
    from verifier.app import create_app
    from verifier.errors import JobError, SetupError
    from verifier.judge import JudgeSettings
    from verifier.metrics import VerifierMetrics
    from verifier.models import PolicyModels, Prefetcher
    from verifier.seen import SeenLedger
    from verifier.instance import resolve as resolve_instance
    from verifier.service import VerifierService

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stop = stop or threading.Event()
    _install_signals(stop)
    key = KeyPair.load_or_create(cfg.key_file)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    instance = resolve_instance(cfg.instance_id, cfg.data_dir)   # which of the replicas sharing the key
    metrics = VerifierMetrics()
    holder: dict[str, Any] = {}
    identity = {"verifier_id": key.peer_id, "public_key": key.public.hex, "instance": instance,
                "coordinator": cfg.coordinator_url}
    status = lambda: holder["service"].status() if "service" in holder else {"state": "starting"}  # noqa: E731
    server = ServerThread(create_app(status, metrics, identity), cfg.host, cfg.port).start()
    write_port_file(cfg.data_dir / "verifier.port", server.port)
    # bounded answers: a claim at its own cap (VerifierService), any other at the largest body
    client = SignedClient(cfg.coordinator_url, key, max_response_bytes=cfg.coordinator_max_body_bytes + (1 << 20))
    closers: list[Any] = [client]
    node = None
    try:
        info = _wait_for_run(client, stop)
        if info is None:
            return
        cfg.pins.check_run(info, f"the coordinator at {cfg.coordinator_url} (GET /v1/run)")
        _check_tasks(info)
        client.run_id = info.run_id  # every claim and verdict is signed for this run
        if key.public.hex not in info.verifier_keys:
            log.error("this verifier's key %s is not among the coordinator's verifier_keys; its claims will "
                      "be refused until the coordinator is configured with it", key.public.hex)
        relays = cfg.relays or info.relays
        cache = cfg.data_dir / "checkpoints"
        from shardcast.p2p import PeerShards
        from shardcast.p2p.roles import join_run

        node = join_run(cfg.p2p, key, info, store_dir=cache, role="verifier")
        peers = PeerShards(node, PublicKey.from_hex(info.operator_key)) if node is not None else None
        if not relays and peers is None:
            raise SetupError("no shardcast relays: set `relays` in the verifier config or in the coordinator's")
        sc = ShardcastClient(relays, info.operator_key, cache, run_id=info.run_id, keep_versions=cfg.keep_versions,
                             peers=peers)
        prefetch_client = ShardcastClient(relays, info.operator_key, cache, run_id=info.run_id,
                                          keep_versions=cfg.keep_versions, peers=peers)
        closers += [sc, prefetch_client]
        models = PolicyModels(sc.fetch, device=cfg.device, capacity=cfg.max_models,
                              on_load=lambda v, s: metrics.model_loads.inc())
        first = _first_tokenizer(sc, info, stop, own_ref=cfg.tokenizer)
        if first is None:
            return
        tokenizer, first_version, first_path = first
        # Load the model before the first claim: the first load (imports, kernels) takes seconds
        # on a busy machine, and submissions would queue behind it (bench/learning: ~8 s at start).
        try:
            models.model(first_version)
        except JobError as exc:  # the first job that needs it will try again
            log.warning("could not load policy version %d ahead of the first job: %s", first_version, exc)
        prefetcher = Prefetcher(prefetch_client, stop, on_version=lambda v: metrics.newest_version.set(v))
        prefetcher.start()
        ledger = SeenLedger(cfg.data_dir / "seen.sqlite")
        closers.append(ledger)
        service = VerifierService(
            client, coordinator_key=PublicKey.from_hex(info.coordinator_key), tokenizer=tokenizer, models=models,
            settings=JudgeSettings(run_id=info.run_id, limits={"float32": cfg.thresholds,
                                                                "bfloat16": cfg.bf16_thresholds},
                                   vocab_size=run_vocab_size(first_path, tokenizer)),
            ledger=ledger, metrics=metrics,
            batch_jobs=cfg.batch_jobs, poll_interval_s=cfg.poll_interval_s,
            max_submission_bytes=cfg.coordinator_max_body_bytes, instance=instance)
        holder["service"] = service
        log.info("verifier %s judging submissions of run %s (relays: %s%s)", key.peer_id, info.run_id,
                 ", ".join(relays) or "none configured", "; p2p on" if node is not None else "")
        service.run(stop)
        prefetcher.join(timeout=5.0)
    finally:
        stop.set()
        server.stop()
        for c in reversed(closers):
            c.close()
        if node is not None:
            node.stop()


def _install_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def _check_tasks(info: Any) -> None:
    """SetupError when this verifier would score otherwise than the coordinator (another scorer
    plugin or version: `protocol.tasks.digest`)."""
    from protocol.errors import ProtocolError
    from protocol.tasks.digest import SCORER_PARTS, check_run
    from verifier.errors import SetupError

    try:
        check_run("verifier", info, SCORER_PARTS)
    except ProtocolError as exc:
        raise SetupError(str(exc)) from exc


def _wait_for_run(client: Any, stop: threading.Event):
    """GET /v1/run, retried until the coordinator answers (None when stopped first)."""
    from protocol.errors import Rejected, Stopped, Unavailable
    from protocol.messages import RunInfo
    from protocol.retry import retry_call
    from protocol.routes import RUN

    def waiting(exc: BaseException, wait: float) -> None:
        log.warning("waiting for the coordinator at %s: %s (retrying in %.1f s)", client.base_url, exc, wait)

    try:
        return retry_call(lambda: client.get(RUN, RunInfo), "waiting for the run", stop,
                          retry_on=(Unavailable, Rejected), cap_s=10.0, on_retry=waiting)
    except Stopped:
        return None


def run_vocab_size(checkpoint: Path, tokenizer: Any) -> int:
    """The run's vocabulary size, read from a checkpoint's config without loading its weights
    (the embedding rows; else the tokenizer's length): the coordinator's intake rule, so the
    cheap path refuses the token ids intake refuses (`JudgeSettings.vocab_size`)."""
    try:
        from transformers import AutoConfig

        full = AutoConfig.from_pretrained(str(checkpoint))
    except (OSError, ValueError):
        return len(tokenizer)
    conf = getattr(full, "text_config", None) or full
    return int(getattr(conf, "vocab_size", None) or len(tokenizer))


def _first_tokenizer(sc: Any, info: Any, stop: threading.Event, own_ref: str = ""):
    """(The run's tokenizer, the policy version it came from, that version's folder): from the
    first version the relays offer (operator-signed; the tokenizer never changes within a run),
    or from `own_ref` (the verifier config's `tokenizer`) if the checkpoint has none. Never from
    the run's `tokenizer_ref`: that is the coordinator's word, and loading it let a coordinator
    pick any folder of this machine or any hub repository as the tokenizer whose decoding the
    verifier scores; a checkpoint without a tokenizer and no `own_ref` is a SetupError naming it.
    None when stopped first."""
    from protocol.errors import ProtocolError, Stopped, Unavailable
    from protocol.http import short
    from protocol.lm import load_tokenizer
    from protocol.retry import retry_call
    from verifier.errors import SetupError

    wanted = [info.current_policy_version]

    def attempt():
        version = wanted[0]
        try:
            while version is None:
                if stop.is_set():
                    raise Stopped("stopped while waiting for a policy version")
                version = sc.wait_for_version(None, 5.0)
            path = Path(sc.fetch(version))
        except Stopped:
            raise
        except ProtocolError as exc:
            wanted[0] = None  # that one may be gone: take the newest the relays announce
            raise Unavailable(f"policy version {version}: {exc}") from exc
        try:
            return load_tokenizer(str(path)), version, path
        except (OSError, ValueError) as exc:
            if not own_ref:
                named = (f"; the coordinator names {short(info.tokenizer_ref, 200)!r}, which is not loaded on its "
                         "word" if info.tokenizer_ref else "")
                raise SetupError(f"policy version {version} has no tokenizer ({short(str(exc), 200)}){named}: set "
                                 "`tokenizer` in the verifier config to the run's tokenizer (a folder or hub id)") \
                    from exc
            log.info("version %d has no tokenizer (%s); using the configured %s", version, short(str(exc), 200),
                     own_ref)
            return load_tokenizer(own_ref), version, path

    def waiting(exc: BaseException, wait: float) -> None:
        log.warning("waiting for a policy version: %s (retrying in %.1f s)", exc, wait)

    try:
        return retry_call(attempt, "waiting for a policy version", stop, cap_s=10.0, on_retry=waiting)
    except Stopped:
        return None
