"""`swarmrl trainer`: set up the model, checkpoints, origin and HTTP status, then run the loop.

Single process by default; under `torchrun --nproc_per_node=N swarmrl trainer ...` every rank
runs `run`, rank 0 talks to the coordinator and the origin, and the model is sharded with
FSDP2 (`distributed.py`). SIGINT/SIGTERM ask the loop to stop between phases (a second
signal interrupts at once; nothing is lost either way: checkpoints are atomic and received
groups are spooled).
"""

from __future__ import annotations

import logging
import signal
import threading

from protocol.errors import Stopped
from trainer.config import TrainerConfig

log = logging.getLogger("swarmrl.trainer")


class StopFlag:
    """Set by SIGINT/SIGTERM; a second signal raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> bool:
        return self.event.is_set()

    def install(self) -> None:
        def handler(signum, frame):
            if self.event.is_set():
                raise KeyboardInterrupt
            log.info("signal %d: stopping after the current phase", signum)
            self.event.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
            signal.signal(signal.SIGTERM, handler)


def run(cfg: TrainerConfig, stop: StopFlag | None = None) -> None:
    import torch

    from trainer import distributed
    from trainer.setup import build_trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the step log
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stop = stop or StopFlag()
    stop.install()
    team = distributed.Team.from_env(cfg.device)
    clean = False
    try:
        if team.rank == 0:
            try:
                parts = build_trainer(cfg, team, stop)
            except Stopped:
                log.info("stopped before the trainer started")
                return
            try:
                parts.loop.run()
            except Stopped as exc:  # a stop request ended a wait for the coordinator
                log.info("%s; stopping", exc)
            finally:
                team.finish()
                parts.close()
        else:
            distributed.follower_loop(cfg, team)
        clean = True
    finally:
        team.close(clean)
    if team.sharded:  # a clean run under torchrun: end the rank before gloo's exit-time abort
        distributed.exit_rank(0)
