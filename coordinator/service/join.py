"""Joining the run: run info, registration (allowlist, proof of work, identities per
address), heartbeats, and a worker's public standing."""

from __future__ import annotations

from coordinator import p2p
from coordinator.context import Context
from coordinator.errors import Forbidden, NotFound, RateLimited
from coordinator.rules.reputation import check_rate
from coordinator.service import require_worker, use_nonce
from coordinator.store import policy, workers
from protocol.envelope import Opened
from protocol.messages import Heartbeat, Registration, RegistrationResponse, RunInfo, WorkerInfo
from protocol.pow import pow_ok


def run_info(ctx: Context, current: int | None = None) -> RunInfo:
    if current is None:
        with ctx.db.read() as conn:
            current = policy.current(conn)
    cfg = ctx.cfg
    return RunInfo(run_id=cfg.run_id, coordinator_key=ctx.key.public.hex, operator_key=ctx.operator.hex,
                   verifier_keys=sorted(ctx.verifier_keys), relays=list(cfg.relays),
                   current_policy_version=current, async_window=cfg.async_window,
                   pow_challenge=ctx.pow_challenge, pow_difficulty=cfg.join.pow_difficulty,
                   tokenizer_ref=str(cfg.model), p2p_bootstrap=p2p.bootstrap_addrs(ctx),
                   allowed_dtypes=list(cfg.allowed_dtypes))


def worker_check_rate(ctx: Context, clean_checks: int) -> float:
    c = ctx.cfg.check_rate
    return check_rate(clean_checks, initial=c.initial, floor=c.floor, halve_every=c.halve_every)


def register(ctx: Context, opened: Opened[Registration], address: str) -> RegistrationResponse:
    cfg = ctx.cfg.join
    signer = opened.envelope.signer
    worker_id = opened.signer_id
    if cfg.allowlist and signer not in cfg.allowlist:
        raise Forbidden("not_allowlisted", f"this run admits only allowlisted keys; {worker_id} is not one")
    if not pow_ok(ctx.pow_challenge, signer, opened.body.pow_nonce, cfg.pow_difficulty):
        raise Forbidden("bad_pow", f"registration needs a proof of work of {cfg.pow_difficulty} bits over "
                                   f"challenge {ctx.pow_challenge} (see protocol.pow.solve_pow)")
    now = ctx.clock()
    body = opened.body
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        row = workers.get(conn, worker_id)
        if row is not None and row.status == "banned":
            raise Forbidden("banned", f"worker {worker_id} is banned: {row.ban_reason}")
        if cfg.identities_per_address and address not in ctx.cfg.limits.exempt_addresses:
            others = [w for w in workers.active_ids_at_address(conn, address) if w != worker_id]
            if len(others) >= cfg.identities_per_address:
                wait = cfg.heartbeat_interval_s * cfg.missed_heartbeats_gone
                raise RateLimited("address_limit", f"address {address} already has {len(others)} active "
                                                   f"identit{'y' if len(others) == 1 else 'ies'} (limit "
                                                   f"{cfg.identities_per_address}); an idle one is released "
                                                   f"after {wait:.0f} s without heartbeats", wait)
        fields = dict(address=address[:64], hardware=body.hardware.model_dump_json(),
                      client_version=body.client_version, engine=body.engine, last_seen=now, status="active")
        if row is None:
            workers.insert(conn, dict(worker_id=worker_id, public_key=signer, registered_at=now, **fields))
            clean = 0
        else:
            workers.update_fields(conn, worker_id, **fields)
            clean = row.clean_checks
        current = policy.current(conn)
    return RegistrationResponse(worker_id=worker_id, check_rate=worker_check_rate(ctx, clean),
                                run=run_info(ctx, current))


def heartbeat(ctx: Context, opened: Opened[Heartbeat]) -> dict:
    now = ctx.clock()
    hb = opened.body
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        row = require_worker(conn, opened.signer_id)
        workers.heartbeat(conn, row.worker_id, now, hb.policy_version, hb.tokens_per_s, hb.status)
        current = policy.current(conn)
    return {"ok": True, "policy_version": current, "check_rate": worker_check_rate(ctx, row.clean_checks)}


def worker_info(ctx: Context, worker_id: str) -> WorkerInfo:
    with ctx.db.read() as conn:
        row = workers.get(conn, worker_id)
    if row is None:
        raise NotFound("unknown_worker", f"no worker {worker_id}")
    return WorkerInfo(worker_id=row.worker_id, status=row.status, accepted=row.accepted, rejected=row.rejected,
                      accepted_tokens=row.accepted_tokens, check_rate=worker_check_rate(ctx, row.clean_checks),
                      ban_reason=row.ban_reason, checked_positions=row.checked_positions, near_ties=row.near_ties)
