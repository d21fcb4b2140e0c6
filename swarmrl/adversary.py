"""A dishonest worker for the demo and the tests: the real worker daemon with a cheating engine.

It follows the protocol to the letter (registers, leases, signs, submits with proofs) but
generates with weights other than the policy it claims, the cheapest cheat there is:
  noise  — the claimed version's weights plus Gaussian noise (10% of each tensor's std);
  other  — a freshly initialised model of the same shape (another seed);
  stale  — always the first version it ever loaded, claimed as whatever it is asked for.
Its proofs are built honestly from the hidden states it really computed, so only the
verifier's recomputation with the claimed version can catch it — which is the point.

Run as `python -m swarmrl.adversary --config worker.toml --cheat noise`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from worker.engines.transformers_engine import TransformersEngine

CHEATS = ("noise", "other", "stale")


class CheatingEngine(TransformersEngine):
    def __init__(self, cheat: str, seed: int = 1234, **kwargs):
        if cheat not in CHEATS:
            raise ValueError(f"unknown cheat {cheat!r}; one of {CHEATS}")
        super().__init__(**kwargs)
        self.cheat = cheat
        self.seed = seed

    def load(self, checkpoint_dir: Path, version: int) -> None:
        if self.cheat == "stale" and self.model is not None:
            self.version = version
            return
        super().load(checkpoint_dir, version)
        if self.cheat == "stale":
            return
        g = torch.Generator().manual_seed(self.seed + version)
        with torch.no_grad():
            for p in self.model.parameters():
                noise = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
                if self.cheat == "noise":
                    p.add_(noise * (0.1 * float(p.float().std()) + 1e-8))
                else:
                    p.copy_(noise * 0.02)


def main(argv: list[str] | None = None) -> None:
    from protocol.config import load_config
    from worker.config import WorkerConfig
    from worker.main import run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--cheat", default="noise", choices=CHEATS)
    args = ap.parse_args(argv)
    cfg = load_config(WorkerConfig, args.config, env_prefix="SWARMRL_WORKER_")
    engine = CheatingEngine(args.cheat, device=cfg.device, dtype=cfg.dtype, threads=cfg.threads)
    run(cfg, engine=engine)


if __name__ == "__main__":
    main()
