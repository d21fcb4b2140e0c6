"""Run under torchrun by test_trainer_distributed.py: one GRPO step of a fixed batch on N ranks
(FSDP2, gloo on the CPU) through `trainer.distributed.Team`; rank 0 writes the
merged loss statistics, the gradient norm and the gathered weights after the step.
An optional 4th argument names the device (tests/gpu runs it with `cuda`: NCCL under torchrun);
the output files then carry the device in their names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def batch():
    from types import SimpleNamespace as NS

    g = torch.Generator().manual_seed(7)
    groups = []
    for i in range(5):
        comps = [torch.randint(3, 40, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() + [1]
                 for _ in range(4)]
        rewards = [float(x) for x in torch.randint(0, 2, (4,), generator=g).tolist()]
        if len(set(rewards)) == 1:
            rewards[0] = 1.0 - rewards[0]
        from coordinator.rules.advantages import group_advantages

        adv = group_advantages(rewards)
        groups.append((NS(submission_id=f"g{i}", prompt_token_ids=list(range(5, 5 + 3 + i)), completions=comps,
                          rewards=rewards, advantages=adv, policy_version=0, temperature=0.9), adv))
    return groups


def main(model_dir: str, out: str, row_tokens: int, device: str = "cpu") -> None:
    from protocol.lm import load_model
    from trainer.config import LossConfig
    from trainer.distributed import Team, exit_rank
    from trainer.history import WeightHistory
    from trainer.step import StepOptions

    torch.set_num_threads(1)
    team = Team.from_env(device)
    torch.manual_seed(0)
    model = load_model(model_dir, device=team.device).train()
    model, template = team.prepare(model)
    # SGD: the weights after the step compare the summed gradients directly (Adam would
    # amplify float noise in parameters whose gradients are ~0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opts = StepOptions(loss=LossConfig(), grad_clip=0.5, updates=2, row_tokens=row_tokens, micro_batch_tokens=64)
    history = WeightHistory(template, keep=1, device=team.device)
    params = {id(p): p for m in (model, template) for p in m.parameters()}  # the same module twice in one process
    held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
               for p in params.values() if not p.is_meta)
    groups = batch() if team.rank == 0 else None
    if team.rank != 0:  # a follower receives the command the way distributed.follower_loop does
        _, groups, _version, paths = team.broadcast(None)
        history.replace_paths(paths)
    res = team.step(model, opt, groups, version=0, opts=opts, history=history)
    sd = team.full_state_dict(model)
    if not team.sharded:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    name = f"{team.world}" if device == "cpu" else f"{team.world}-{device}{'-fsdp' if team.sharded else ''}"
    if team.rank == 0:
        torch.save(sd, Path(out) / f"weights-{name}.pt")
        (Path(out) / f"result-{name}.json").write_text(json.dumps(
            {"stats": res.stats, "grad_norm": res.grad_norm, "tokens": res.tokens, "micro_batches": res.micro_batches,
             "param_bytes": held}))
    team.close()
    if team.sharded:
        exit_rank(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
