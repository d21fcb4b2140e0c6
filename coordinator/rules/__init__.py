"""The coordinator's decisions as plain functions and small state objects.

Nothing here touches the network, the database, the wall clock or a global random source:
time (`now`) and randomness (`rng`, or a uniform draw `u`) are arguments, so every rule is
unit-tested by calling it. `coordinator.service` applies these rules to what the store
holds; the FastAPI routes in `coordinator.app` only translate HTTP to service calls.

- `reputation`  check rates (100% for a new identity, halving with clean checks, floor)
- `advantages`  group-normalised advantages of a group's rewards
- `leasing`     allowed policy versions, seeds, ids, which returned task to hand out
- `intake`      the cheap checks a submission must pass against its lease
- `buffer`      which accepted groups a training batch takes and which fell out of the window
- `limits`      token buckets (per identity, per address)
"""
