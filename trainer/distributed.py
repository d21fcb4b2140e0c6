"""One trainer over many processes: torchrun + FSDP2 (`fully_shard`), or a single process.

`Team` is what the loop sees: `prepare(model)` shards the model (each decoder layer, then
the root) over a 1-D device mesh; `step(...)` runs one GRPO step on every rank; `save(...)`
gathers the full state dict (a collective) and rank 0 writes the checkpoint; `finish()`
releases the followers. Rank 0 runs the loop (HTTP, origin, evaluation) and broadcasts each
command — ("step", groups, version, history paths) / ("save", version, step, state) /
("stop",) — as a pickled object; ranks >= 1 run `follower_loop`, which only obeys.

Gradients: each rank's loss is its share of the token sum divided by the step's global token
count; FSDP's reduce-scatter averages over ranks, so the loss is scaled by the world size and
the summed gradient equals one process's gradient on the whole batch. Backends: gloo on the
CPU (the 2-process test), NCCL on GPUs. With one process every method is a direct call.

Memory: each rank holds its shard of the weights, gradients and AdamW state (the model is
loaded whole once, then `fully_shard` keeps only the rank's shard); the template is on the
meta device. Behaviour log-probabilities of older versions come from an unsharded shadow
model loaded from the version's checkpoint folder (shared disk) when a step needs one: fine
up to models that fit one device, and the place to shard next for larger ones.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from trainer.errors import DistributedError
from trainer.history import WeightHistory
from trainer.step import StepOptions, StepResult, run_step


@dataclass
class Team:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    mesh: Any = None  # set under torchrun (even with one rank): the model is then FSDP2-sharded

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    @classmethod
    def from_env(cls, device: str = "cpu") -> Team:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and "RANK" not in os.environ:  # not under torchrun: one plain process
            return cls(device=device)
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        # On GPUs, NCCL for the model's tensors and gloo for the small CPU tensors and objects
        # the ranks exchange (counts, commands): NCCL alone rejects CPU tensors.
        backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"could not join the torchrun process group ({backend}): {exc}") from exc
        rank = dist.get_rank()
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (world,))
        return cls(rank=rank, world=world, device=device, mesh=mesh)

    # -- collectives -----------------------------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        if not self.sharded:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if not self.sharded:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t

    def all_reduce_max(self, n: int) -> int:
        if not self.sharded:
            return n
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0])

    # -- model -----------------------------------------------------------------------------
    def prepare(self, model: Any) -> tuple[Any, Any]:
        """(the model to train, FSDP2-sharded under torchrun; a template of the same
        architecture for saving and for the history's shadow model). Sharded, the template
        is built on the meta device (no weights: a full copy per rank would defeat the
        sharding); it saves a gathered state dict, and shadows load from checkpoint folders."""
        if not self.sharded:
            return model, model
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            template = AutoModelForCausalLM.from_config(model.config)
        template.generation_config = copy.deepcopy(model.generation_config)  # the model's EOS ids
        from torch.distributed.fsdp import fully_shard

        layers = getattr(getattr(model, model.base_model_prefix, model), "layers", [])
        for layer in layers:
            fully_shard(layer, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)
        return model, template

    def full_state_dict(self, model: Any) -> dict | None:
        """Full CPU state dict on rank 0 (None elsewhere; a collective when world > 1)."""
        if not self.sharded:
            return None  # save_pretrained reads the model itself
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.rank == 0 else None

    def full_optimizer_state(self, model: Any, optimizer: Any) -> dict | None:
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        sd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.rank == 0 else None

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))

    # -- commands (rank 0 drives) -------------------------------------------------------------
    def step(self, model: Any, optimizer: Any, groups: list, *, version: int, opts: StepOptions,
             history: WeightHistory, ref_model: Any = None) -> StepResult:
        if self.rank == 0 and self.sharded:
            self.broadcast(("step", groups, version, {v: str(p) for v, p in history.paths().items()}))
        return run_step(model, optimizer, groups, version=version, opts=opts, history=history, ref_model=ref_model,
                        rank=self.rank, world=self.world, all_reduce=self.all_reduce if self.sharded else None,
                        loss_scale=float(self.world), max_count=self.all_reduce_max if self.sharded else None)

    def gather_for_save(self, model: Any, optimizer: Any, version: int) -> tuple[dict | None, dict | None]:
        if self.rank == 0 and self.sharded:
            self.broadcast(("save", version))
        return self.full_state_dict(model), self.full_optimizer_state(model, optimizer)

    def finish(self) -> None:
        if self.rank == 0 and self.sharded:
            self.broadcast(("stop",))

    def close(self, clean: bool = True) -> None:
        """Leave the process group. After a clean run every rank first waits for the others
        (a rank that tears down while its peer is still inside a collective fails the peer).
        After an error no rank waits (the others may be inside another collective); their
        next collective fails instead. A rank process should then end with `exit_rank`."""
        if self.sharded:
            import torch.distributed as dist

            if dist.is_initialized():
                if clean:
                    dist.barrier()
                dist.destroy_process_group()


def exit_rank(code: int = 0) -> NoReturn:
    """End a torchrun rank's process now, skipping the interpreter's teardown (logs and
    stdio flushed first; everything the rank owes is written by then).

    Why: with torch 2.13's gloo a rank that has left its process group cleanly can still
    abort while the interpreter exits ("terminate called without an active exception",
    SIGABRT, so torchrun reports the run failed): C++ threads of the torn-down group are
    still joinable when their owners are destroyed at exit. Measured under torchrun on a
    loaded 2-core machine with a 2-rank script (all_reduce, broadcast_object_list, barrier,
    destroy_process_group): rank 1 aborted in 2 of ~28 runs, after destroy_process_group had
    returned (a marker printed after it); ending with this function: 0 aborts in 91 runs.
    The 2-rank trainer test had failed this way in CI (3 of 20 local runs under load)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(code)


def follower_loop(cfg: Any, team: Team) -> None:
    """Ranks >= 1: take the config rank 0 completed with the run's terms (`setup.build_trainer`),
    build the same model and optimizer, then obey rank 0's commands."""
    from trainer.setup import build_model_and_optimizer, reference_model

    cfg = team.broadcast(None)
    model, template, optimizer, _ = build_model_and_optimizer(cfg, team)
    ref_model = reference_model(cfg, team)
    history = WeightHistory(template, keep=cfg.staleness_limit + 1, device=team.device)
    from trainer.loop import step_options

    opts = step_options(cfg, pad_id=0)
    while True:
        cmd = team.broadcast(None)
        if cmd[0] == "stop":
            return
        if cmd[0] == "step":
            _, groups, version, paths = cmd
            history.replace_paths({int(v): p for v, p in paths.items()})
            team.step(model, optimizer, groups, version=version, opts=opts, history=history, ref_model=ref_model)
        elif cmd[0] == "save":
            team.gather_for_save(model, optimizer, cmd[1])
        else:
            raise DistributedError(f"unknown command from rank 0: {cmd[0]!r}")
