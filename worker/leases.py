"""Leases: checking what the coordinator handed out, and which policy version to use.

`open_lease` accepts a lease only if the run's coordinator key signed it, it names this
worker and this run, and it has not expired; anything else is dropped (a man in the middle
or a confused coordinator cannot make the worker burn compute on forged work).

`plan` decides, for a set of held leases, which policy version to generate with now. The
rule: among the versions ready on this machine (loaded or downloaded), use the newest that
the most leases allow; leases that allow none of them wait for a download of the newest
version they allow. So a new version is used as soon as it is ready, and an older one keeps
the worker busy meanwhile, but only while the lease (the coordinator's async window) still
allows it. Pure functions of their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.envelope import AUDIENCE_WORKER, Envelope, open_envelope
from protocol.errors import ProtocolError
from protocol.identity import PublicKey
from protocol.messages import KIND_LEASE, Lease
from worker.errors import LeaseError


def open_lease(env: Envelope, coordinator_key: PublicKey, worker_id: str, run_id: str, now: float) -> Lease:
    """The lease inside `env`, or LeaseError saying why it cannot be used."""
    try:
        # No clock-skew check: expiry below is what matters, and it is the coordinator's clock.
        lease = open_envelope(env, KIND_LEASE, Lease, signer=coordinator_key, max_skew_s=None, run_id=run_id,
                              audience=AUDIENCE_WORKER).body
    except ProtocolError as exc:
        raise LeaseError(f"lease refused: {exc}") from exc
    if lease.lease_id.startswith("."):
        # the id names its spool file (worker.spool): ".." or a hidden name is none it may take
        raise LeaseError(f"lease id {lease.lease_id!r} cannot name a spool file; lease refused")
    if lease.worker_id != worker_id:
        raise LeaseError(f"lease {lease.lease_id} is for worker {lease.worker_id}, not this one")
    if lease.run_id != run_id:
        raise LeaseError(f"lease {lease.lease_id} is for run {lease.run_id!r}, not {run_id!r}")
    if lease.min_policy_version > lease.max_policy_version:
        raise LeaseError(f"lease {lease.lease_id} allows no policy version")
    if lease.expires_at <= now:
        raise LeaseError(f"lease {lease.lease_id} expired {now - lease.expires_at:.0f} s ago")
    return lease


def allows(lease: Lease, version: int) -> bool:
    return lease.min_policy_version <= version <= lease.max_policy_version


@dataclass
class Plan:
    version: int | None                      # generate `now` with this version (None: nothing ready)
    now: list[Lease] = field(default_factory=list)
    later: list[Lease] = field(default_factory=list)   # need a version that is not ready yet
    fetch: list[int] = field(default_factory=list)     # versions to download, most wanted first


def plan(leases: list[Lease], ready: set[int]) -> Plan:
    """Which leases to run now and with which version; what to download for the rest."""
    best, best_n = None, 0
    for v in sorted(ready, reverse=True):
        n = sum(allows(lease, v) for lease in leases)
        if n > best_n:
            best, best_n = v, n
    now = [lease for lease in leases if best is not None and allows(lease, best)]
    later = [lease for lease in leases if best is None or not allows(lease, best)]
    wanted: set[int] = {lease.max_policy_version for lease in leases}
    # Newer than what we use now is worth prefetching, in range of some lease.
    fetch = sorted((v for v in wanted if v not in ready and (best is None or v > best)), reverse=True)
    return Plan(version=best, now=now, later=later, fetch=fetch)


# Versions worth trying, newest first, when the newest a lease allows cannot be fetched: each
# one that fails costs a manifest wait, and the coordinator's window is a few versions.
MAX_FALLBACK_VERSIONS = 16


def fallback_versions(lease: Lease) -> list[int]:
    """The newest MAX_FALLBACK_VERSIONS versions a lease allows, newest first (what to try when
    the newest cannot be fetched). Not all of them: a lease allowing 0..2**31-1 made a list of
    2**31 ints (the daemon died of memory) that `PolicySync.wait_any` walked at every tick."""
    lowest = max(lease.min_policy_version, lease.max_policy_version - MAX_FALLBACK_VERSIONS + 1)
    return list(range(lease.max_policy_version, lowest - 1, -1))
