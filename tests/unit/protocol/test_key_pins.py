"""Key pins (`protocol.config.KeyPins`, the `pins` field of the relay and trainer configs): a key
that differs from its pin stops the role at start, with both keys named.

The worker's and the verifier's pins are shown against a coordinator on loopback in
tests/unit/worker/test_worker_daemon.py and tests/unit/verifier/test_verifier_work_loop.py.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from protocol.errors import MessageError, PinError
from protocol.http import ServerThread
from protocol.identity import KeyPair
from protocol.messages import RunInfo

OPERATOR, COORDINATOR, OTHER = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()


def test_a_relay_refuses_an_operator_key_or_a_bootstrap_peer_other_than_pinned():
    from protocol.config import load_config
    from shardcast.config import RelayConfig

    base = {"upstreams": ["http://trainer:8750"], "operator_key": OPERATOR.public.hex,
            "pins": {"operator": OPERATOR.public.hex, "coordinator": COORDINATOR.public.hex}}
    boot = {"enabled": True, "bootstrap": [f"/ip4/127.0.0.1/tcp/4001/p2p/{COORDINATOR.peer_id}"]}
    assert RelayConfig.model_validate({**base, "p2p": boot}).pins.coordinator == COORDINATOR.public.hex
    with pytest.raises(MessageError, match=f"names operator key {OTHER.public.hex[:16]}"):
        load_config(RelayConfig, overrides={**base, "operator_key": OTHER.public.hex})
    impostor = {"enabled": True, "bootstrap": [f"/ip4/127.0.0.1/tcp/4001/p2p/{OTHER.peer_id}"]}
    with pytest.raises(MessageError, match=f"names coordinator key {OTHER.public.hex[:16]}"):
        load_config(RelayConfig, overrides={**base, "p2p": impostor})


def _run_info_server(coordinator: KeyPair) -> ServerThread:
    app = FastAPI()

    @app.get("/v1/run")
    def run():
        return RunInfo(run_id="swarmrl-run", coordinator_key=coordinator.public.hex,
                       operator_key=OPERATOR.public.hex, verifier_keys=[], relays=[], current_policy_version=None,
                       async_window=1).model_dump()

    return ServerThread(app).start()


def test_a_trainer_refuses_a_key_file_or_a_coordinator_other_than_pinned(tmp_path):
    """Checked before the model is loaded or the origin starts (`build_trainer` gets no team here:
    it never gets that far)."""
    from trainer.config import TrainerConfig
    from trainer.main import StopFlag
    from trainer.setup import build_trainer

    OPERATOR.save(tmp_path / "operator.key")
    server = _run_info_server(OTHER)
    try:
        cfg = TrainerConfig(model="unused", key_file=tmp_path / "operator.key", data_dir=tmp_path / "t",
                            coordinator_url=server.url,
                            pins={"operator": OTHER.public.hex, "coordinator": COORDINATOR.public.hex})
        with pytest.raises(PinError, match="the trainer's key file .* names operator key"):
            build_trainer(cfg, team=None, stop=StopFlag())
        cfg = cfg.model_copy(update={"pins": cfg.pins.model_copy(update={"operator": OPERATOR.public.hex})})
        with pytest.raises(PinError, match=f"GET /v1/run.* names coordinator key {OTHER.public.hex[:16]}"):
            build_trainer(cfg, team=None, stop=StopFlag())
    finally:
        server.stop()
