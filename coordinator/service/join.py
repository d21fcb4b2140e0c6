"""Joining the run: run info, registration (allowlist, proof of work over a challenge that
changes per run and epoch, identities per address — banned ones count for a cooldown), heartbeats,
and a worker's standing (its check rate: `worker_check_rate`, the operator's to see; no one
else is told a rate).

Identities per address count by `protocol.guard.address_key`, as the rate limits and the
swarm's gate do: an IPv4 address (IPv4-mapped IPv6 included), or the /64 of an IPv6 address
(one line's allocation: counted address by address, one home line held 2^64 places). A worker's
row keeps that key as its `address` (an exempt address as it is); rows stored before the key
(a whole IPv6 address, an IPv4-mapped one) are re-keyed when a coordinator starts
(`coordinator.context.prepare_database`), so they count too. A silent ('gone') identity
frees its place; it takes one again, under the same cap, when it comes back (`revive`):
before, a heartbeat or a lease request made it active past the cap, so an address gathered any
number of active identities, one per silence period."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row

from coordinator import p2p
from coordinator.admission import identity_address
from coordinator.context import Context
from coordinator.errors import Forbidden, NotFound, RateLimited
from coordinator.privacy import public_reason
from coordinator.rules.reputation import check_rate, effective_clean_checks
from coordinator.service import require_worker, use_nonce
from coordinator.store import policy, workers
from protocol.envelope import Opened
from protocol.messages import Heartbeat, Registration, RegistrationResponse, RunInfo, TaskSpec, WorkerInfo
from protocol.pow import epoch_challenge, pow_ok


def pow_challenges(ctx: Context, now: float) -> tuple[str, str]:
    """(current, previous) epoch's proof-of-work challenge."""
    epoch = int(now // ctx.cfg.join.pow_epoch_s)
    return (epoch_challenge(ctx.pow_seed, ctx.cfg.run_id, epoch),
            epoch_challenge(ctx.pow_seed, ctx.cfg.run_id, epoch - 1))


def run_info(ctx: Context, current: int | None = None) -> RunInfo:
    if current is None:
        with ctx.db.read() as conn:
            current = policy.current(conn)
    cfg = ctx.cfg
    return RunInfo(run_id=cfg.run_id, coordinator_key=ctx.key.public.hex, operator_key=ctx.operator.hex,
                   verifier_keys=sorted(ctx.verifier_keys), relays=list(cfg.relays),
                   current_policy_version=current, async_window=cfg.async_window,
                   pow_challenge=pow_challenges(ctx, ctx.clock())[0], pow_difficulty=cfg.join.pow_difficulty,
                   tokenizer_ref=str(cfg.model), p2p_bootstrap=p2p.bootstrap_addrs(ctx),
                   allowed_dtypes=list(cfg.allowed_dtypes),
                   tasks=TaskSpec(kind=cfg.tasks.kind, seed=cfg.tasks.seed, options=dict(cfg.tasks.options),
                                  chat_template=cfg.chat_template),
                   task_scorer=ctx.tasks.source.kind, task_digests=dict(ctx.tasks.digests))


def worker_check_rate(ctx: Context, w: Any) -> float:
    """The share of `w`'s submissions fully checked (a workers row: its clean checks, less what
    its dropped leases cost: `coordinator.rules.reputation`)."""
    c, s = ctx.cfg.check_rate, ctx.cfg.standing
    clean = effective_clean_checks(w.clean_checks, leases_issued=w.leases_issued, leases_dropped=w.leases_dropped,
                                   drop_share=s.drop_share, drop_slack=s.drop_slack, halve_every=c.halve_every)
    return check_rate(clean, initial=c.initial, floor=c.floor, halve_every=c.halve_every)


def stored_address(ctx: Context, address: str) -> str:
    """What a worker's row keeps as its address: the per-address limits' key
    (`protocol.guard.address_key`), or an exempt address as it is (`admission.identity_address`)."""
    return identity_address(address, ctx.exempt)


def check_address_room(ctx: Context, conn: Connection, address: str, worker_id: str, now: float) -> None:
    """429 `address_limit` unless `worker_id` may be active at `address` (a stored address:
    `stored_address`): fewer than join.identities_per_address other active identities there,
    banned ones within join.ban_cooldown_s included. Takes the address's lock
    (`store.workers.lock_address`) first, so the caller must make the worker active in the same
    transaction: the count and the write are then one step for every replica."""
    cfg = ctx.cfg.join
    if not cfg.identities_per_address or address in ctx.exempt:
        return
    workers.lock_address(conn, address)  # held until the caller's transaction has made it active
    others = [w for w in workers.active_ids_at_address(conn, address) if w != worker_id]
    banned = workers.banned_at_address_since(conn, address, now - cfg.ban_cooldown_s) if cfg.ban_cooldown_s else 0
    if len(others) + banned >= cfg.identities_per_address:
        wait = cfg.ban_cooldown_s if banned else cfg.heartbeat_interval_s * cfg.missed_heartbeats_gone
        raise RateLimited("address_limit", f"address {address} already has {len(others)} active "
                                           f"identit{'y' if len(others) == 1 else 'ies'}"
                                           + (f" and {banned} banned in the last {cfg.ban_cooldown_s:.0f} s"
                                              if banned else "")
                                           + f" (limit {cfg.identities_per_address}); an idle one is "
                                           f"released after {wait:.0f} s", wait)


def revive(ctx: Context, conn: Connection, row: Row, now: float) -> None:
    """Before a request makes a 'gone' worker active again (a heartbeat, a lease request): its
    address must have room for it (`check_address_room`), as at registration."""
    if row.status == "gone":
        check_address_room(ctx, conn, row.address, row.worker_id, now)


def register(ctx: Context, opened: Opened[Registration], address: str) -> RegistrationResponse:
    cfg = ctx.cfg.join
    signer = opened.envelope.signer
    worker_id = opened.signer_id
    if cfg.allowlist and signer not in cfg.allowlist:
        raise Forbidden("not_allowlisted", f"this run admits only allowlisted keys; {worker_id} is not one")
    now = ctx.clock()
    if not any(pow_ok(ch, signer, opened.body.pow_nonce, cfg.pow_difficulty) for ch in pow_challenges(ctx, now)):
        raise Forbidden("bad_pow", f"registration needs a proof of work of {cfg.pow_difficulty} bits over the "
                                   f"current challenge {pow_challenges(ctx, now)[0]} of GET /v1/run (see "
                                   "protocol.pow.solve_pow)")
    body = opened.body
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        row = workers.get(conn, worker_id)
        if row is not None and row.status == "banned":
            raise Forbidden("banned", f"worker {worker_id} is banned: {public_reason(row.ban_reason)}")
        address = stored_address(ctx, address)
        check_address_room(ctx, conn, address, worker_id, now)
        fields = dict(address=address[:64], hardware=body.hardware.model_dump_json(),
                      client_version=body.client_version, engine=body.engine, last_seen=now, status="active")
        if row is None:
            workers.insert(conn, dict(worker_id=worker_id, public_key=signer, registered_at=now, **fields))
        else:
            workers.update_fields(conn, worker_id, **fields)
        current = policy.current(conn)
    return RegistrationResponse(worker_id=worker_id, run=run_info(ctx, current))


def heartbeat(ctx: Context, opened: Opened[Heartbeat]) -> dict:
    now = ctx.clock()
    hb = opened.body
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        row = require_worker(conn, opened.signer_id)
        revive(ctx, conn, row, now)
        workers.heartbeat(conn, row.worker_id, now, hb.policy_version, hb.tokens_per_s, hb.status)
        current = policy.current(conn)
    return {"ok": True, "policy_version": current}


def worker_info(ctx: Context, worker_id: str, *, full: bool = True) -> WorkerInfo:
    """`full`: the operator's view (the worker's check rate, the near-tie ledger, the ban reason
    with its numbers); otherwise no check rate (it halves at every `halve_every`-th clean full
    check, so read after each verdict it would tell the worker which submission had been fully
    checked: `coordinator.privacy`)."""
    with ctx.db.read() as conn:
        row = workers.get(conn, worker_id)
    if row is None:
        raise NotFound("unknown_worker", f"no worker {worker_id}")
    return WorkerInfo(worker_id=row.worker_id, status=row.status, accepted=row.accepted, rejected=row.rejected,
                      accepted_tokens=row.accepted_tokens,
                      check_rate=worker_check_rate(ctx, row) if full else None,
                      ban_reason=row.ban_reason if full else public_reason(row.ban_reason),
                      checked_positions=row.checked_positions if full else 0, near_ties=row.near_ties if full else 0)
