"""`swarmrl audit`: what researchers use to check any rollout a swarm trained on, from the archive.

Data flow: the coordinator writes the archive (Parquet rows of submissions and verdicts,
`run.json`, the checkpoints kept for re-verification; layout and schema in docs/archive.md)
-> `archive.Archive` reads it (pyarrow) -> `filters` selects rows -> `views` builds a rollout
view, a per-worker summary or an export, and `reverify.Reverifier` re-runs the verifier's own
pipeline on archived rollouts against their archived checkpoints -> `render` prints tables
(or JSON) -> `commands` are what `swarmrl audit ...` calls.

Nothing here talks to a running swarm: an archive copied anywhere can be audited. It imports
`protocol` and the verifier's checks, never the coordinator.
"""
