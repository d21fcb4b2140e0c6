"""The coordinator: worker registry, task leases, submission intake and rewards, the
verification queue, the training buffer and policy versions of a swarmrl run (see
DESIGN.md). `coordinator.main.run` serves it; `coordinator.trainer` is the trainer role,
a separate process that talks to the coordinator only over HTTP.
"""
