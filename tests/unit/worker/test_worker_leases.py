"""Lease checks (signature, owner, run, expiry) and the choice of policy version."""

import pytest

from protocol.envelope import AUDIENCE_COORDINATOR, AUDIENCE_WORKER, seal
from protocol.identity import KeyPair
from protocol.messages import KIND_LEASE, Lease, SamplingParams
from worker.errors import LeaseError
from worker.leases import fallback_versions, open_lease, plan

COORD = KeyPair.from_seed(b"c" * 32)
ME = KeyPair.from_seed(b"w" * 32)
FOR_WORKER = {"run_id": "run", "audience": AUDIENCE_WORKER}


def lease(lease_id="l1", lo=0, hi=0, worker=None, run="run", expires=2000.0) -> Lease:
    return Lease(lease_id=lease_id, run_id=run, worker_id=worker or ME.peer_id, task_id="t",
                 prompt_token_ids=[5, 6], seeds=[1, 2], sampling=SamplingParams(temperature=1.0, max_tokens=4),
                 eos_token_id=1, min_policy_version=lo, max_policy_version=hi, issued_at=1000.0, expires_at=expires)


def test_open_lease_accepts_a_coordinator_signed_lease_for_this_worker():
    env = seal(KIND_LEASE, lease(), COORD, **FOR_WORKER)
    assert open_lease(env, COORD.public, ME.peer_id, "run", now=1500.0) == lease()


@pytest.mark.parametrize("signer,body,now,msg", [
    (KeyPair.from_seed(b"x" * 32), lease(), 1500.0, "must be signed by"),
    (COORD, lease(worker=KeyPair.from_seed(b"o" * 32).peer_id), 1500.0, "not this one"),
    (COORD, lease(run="other"), 1500.0, "for run"),
    (COORD, lease(expires=1400.0), 1500.0, "expired"),
    (COORD, lease(lo=3, hi=2), 1500.0, "allows no policy version"),
])
def test_open_lease_refuses_unusable_leases(signer, body, now, msg):
    with pytest.raises(LeaseError, match=msg):
        open_lease(seal(KIND_LEASE, body, signer, **FOR_WORKER), COORD.public, ME.peer_id, "run", now=now)


def test_open_lease_refuses_a_lease_signed_for_another_run_or_role():
    """A coordinator key shared by two runs: its lease of the other run (or a message it addressed
    to the coordinator role) is not a lease for this worker, whatever the body says."""
    with pytest.raises(LeaseError, match="signed for run 'other'"):
        open_lease(seal(KIND_LEASE, lease(), COORD, run_id="other", audience=AUDIENCE_WORKER), COORD.public,
                   ME.peer_id, "run", now=1500.0)
    with pytest.raises(LeaseError, match="signed for the 'coordinator' role"):
        open_lease(seal(KIND_LEASE, lease(), COORD, run_id="run", audience=AUDIENCE_COORDINATOR), COORD.public,
                   ME.peer_id, "run", now=1500.0)


def test_open_lease_refuses_a_tampered_body():
    env = seal(KIND_LEASE, lease(), COORD, **FOR_WORKER)
    env.body["seeds"] = [7, 7]
    with pytest.raises(LeaseError, match="signature"):
        open_lease(env, COORD.public, ME.peer_id, "run", now=1500.0)


def test_plan_uses_the_newest_ready_version_the_leases_allow_and_prefetches_newer():
    ls = [lease("a", 3, 5), lease("b", 3, 5)]
    p = plan(ls, ready={2, 3, 4})
    assert p.version == 4 and [x.lease_id for x in p.now] == ["a", "b"] and p.later == []
    assert p.fetch == [5]


def test_plan_with_nothing_allowed_ready_waits_for_the_newest_allowed():
    p = plan([lease("a", 3, 5)], ready={1, 2})
    assert p.version is None and [x.lease_id for x in p.later] == ["a"] and p.fetch == [5]


def test_plan_splits_leases_whose_windows_differ():
    p = plan([lease("old", 1, 2), lease("new", 4, 5)], ready={2, 5})
    # one version each; the tie goes to the newest version
    assert p.version == 5 and [x.lease_id for x in p.now] == ["new"] and [x.lease_id for x in p.later] == ["old"]
    assert p.fetch == []


def test_fallback_versions_newest_first():
    assert fallback_versions(lease(lo=3, hi=5)) == [5, 4, 3]


def test_fallback_versions_are_the_newest_few_whatever_range_a_lease_allows():
    """A lease (signed by whatever coordinator the worker was pointed at) may allow versions
    0..2**31-1: the fallback list was every one of them (2**31 ints, ~80 GB: the daemon died of
    memory the first time the newest could not be fetched), and `PolicySync.wait_any` walked the
    whole list twice per 0.5 s tick. Only the newest MAX_FALLBACK_VERSIONS are worth trying (each
    failed one costs a manifest wait)."""
    from worker.leases import MAX_FALLBACK_VERSIONS

    got = fallback_versions(lease(lo=0, hi=10**6))
    assert got == list(range(10**6, 10**6 - MAX_FALLBACK_VERSIONS, -1))
    assert fallback_versions(lease(lo=0, hi=2**31 - 1))[0] == 2**31 - 1
    assert len(fallback_versions(lease(lo=0, hi=2**31 - 1))) == MAX_FALLBACK_VERSIONS


@pytest.mark.parametrize("lease_id", ["..", ".hidden", "."])
def test_open_lease_refuses_a_lease_id_the_spool_cannot_name(lease_id):
    """A lease id is a file name in the spool (`pending/<lease_id>.json`); one starting with "."
    passes the protocol's id pattern but `Spool.put` raised ValueError for it once the lease was
    generated, past `_generate`'s handling of OSError: the daemon ended (at every such lease)."""
    body = lease().model_copy(update={"lease_id": lease_id})
    with pytest.raises(LeaseError, match="lease id"):
        open_lease(seal(KIND_LEASE, body, COORD, **FOR_WORKER), COORD.public, ME.peer_id, "run", now=1500.0)
