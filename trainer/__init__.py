"""The trainer role: GRPO steps on verified groups, checkpoints, and publishing policy versions.

A role of its own (it imports `protocol` and `shardcast`, never `coordinator`): it talks to the
coordinator only over HTTP, and takes the run's terms — run id, async window, task source —
from the coordinator's GET /v1/run at start (`config.from_run`, via `setup.join_run`).

Data flow: `loop.TrainerLoop` takes accepted groups from the coordinator (`client.py`),
filters them (`filtering.py`: no signal, pass rate; the advantages are the coordinator's),
packs them (`packing.py`), runs a step (`step.py`: behaviour log-probs from `history.py`, the
loss of `loss.py`), saves the version atomically (`checkpoint.py`), publishes it through the
shardcast origin and announces it, and evaluates it on held-out tasks (`evaluate.py`).
`main.run` is the entry point (`swarmrl trainer`); `setup.py` assembles the parts,
`distributed.py` runs the same step over torchrun ranks with FSDP2, `status.py` serves
/health, /metrics and /v1/trainer/status.
"""
