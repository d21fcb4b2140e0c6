"""The coordinator: worker registry, task leases, submission intake and rewards, the
verification queue, the training buffer and policy versions of a swarmrl run (see
DESIGN.md). `coordinator.main.run` serves it. The trainer is another role (the top-level
`trainer` package), a separate process that talks to the coordinator only over HTTP.

    main.py        `swarmrl coordinator`: one process, or N sharing a socket and the database
    app.py         FastAPI routes: thin adapters over one service call each
    admission.py   the cheap checks on a request's headers: body caps per route, rate and byte budgets
    api.py         the plumbing every route shares: body, verification, identity limit, errors
    auth.py        request bytes -> verified, typed message (or a clear 4xx); the operator token
    privacy.py     what anonymous readers (and workers) may learn from the read-only answers
    service/       one function per API call: join, work, verification, training, upkeep
    rules/         the decisions as pure functions (leases, intake checks, check rates,
                   advantages, buffer window, token buckets)
    store/         SQL: schema, queries, engines (SQLite WAL / PostgreSQL), a throwaway
                   PostgreSQL for tests and benches
    migrations/    Alembic migrations of the schema (run at start-up)
    taskbook.py    the task source and the tokenizer: prompts, rewards
    archive.py     Parquet archive of submissions and verdicts by policy version
    metrics.py     Prometheus metrics (counters, latencies, state gauges from the database)
    context.py     everything an operation needs, built once and passed explicitly
    dashboard/, checkpoints.py   the read-only dashboard and the checkpoint archive (audit)
"""
