"""The trainer role: GRPO steps on verified groups, checkpoints, and publishing policy versions.

Data flow: `loop.TrainerLoop` takes accepted groups from the coordinator (`client.py`),
filters them (`filtering.py`: no signal, pass rate), packs them (`packing.py`), runs a step (`step.py`: behaviour
log-probs from `history.py`, the loss of `loss.py`), saves the version atomically
(`checkpoint.py`), publishes it through the shardcast origin and announces it, and evaluates
it on held-out tasks (`evaluate.py`). `main.run` is the entry point (`swarmrl trainer`);
`setup.py` assembles the parts, `distributed.py` runs the same step over torchrun ranks
with FSDP2, `status.py` serves /health, /metrics and /v1/trainer/status.
"""
