"""The coordinator's decisions as plain functions and small state objects.

Nothing here touches the network, the database, the wall clock or a global random source:
time (`now`) and randomness (`rng`, or a uniform draw `u`) are arguments, so every rule is
unit-tested by calling it. `coordinator.service` applies these rules to what the store
holds; the FastAPI routes in `coordinator.app` only translate HTTP to service calls.

- `reputation`  check rates (100% for a new identity, halving with clean checks, floor)
- `advantages`  group-normalised advantages of a group's rewards (computed once, at intake)
- `leasing`     seeds, ids, quotas, which returned task to hand out
- `intake`      the lease's state at intake; conformance to the lease is `protocol.conformance`
- `verdicts`    what a verdict causes: buffer state, credit, held groups released, bans
- `near_ties`, `proof_drift`   the statistical tests over a worker's full checks that may ban it
- `limits`      token buckets (per identity, per address)

Rules two roles share live in `protocol` (the async window: `protocol.window`; lease
conformance: `protocol.conformance`). Which accepted groups a training batch takes is decided
where the rows are, in SQL (`coordinator.store.submissions.take_batch` and `drop_stale`, with
the window's floor), and tested there.
"""
