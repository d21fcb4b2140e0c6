"""Policy versions on the verifier: checkpoints from shardcast, models in a small LRU.

Collaborators: `verifier.pipeline` asks `PolicyModels.model(version, dtype)` for the model a
submission claims, computing in the dtype the worker declared (see `verifier.pipeline`);
`Prefetcher` runs in a background thread and downloads each new version as soon as a relay
announces it, so a job rarely waits for a download. Checkpoints are
verified by the shardcast client (signed manifest, every shard hashed) before they are
loaded; a version that cannot be had is a JobError (the job is left for a later claim).

Only the calling thread uses a `PolicyModels`; the prefetcher has its own shardcast client
on the same cache folder (the client's per-version lock makes concurrent fetches safe).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from protocol.errors import ProtocolError, Stopped
from protocol.retry import log_failures, retry_call
from protocol.lm import load_model, reload_weights
from verifier.errors import JobError

log = logging.getLogger("swarmrl.verifier")


class PolicyModels:
    def __init__(self, fetch: Callable[[int], Path], *, device: str = "cpu", dtype: str = "float32",
                 capacity: int = 3, on_load: Callable[[int, float], None] | None = None):
        self.fetch = fetch
        self.device = device
        self.dtype = dtype
        self.capacity = max(1, capacity)
        self.on_load = on_load
        self._models: OrderedDict[tuple[int, str], tuple[Any, str]] = OrderedDict()  # -> (model, config.json)

    def loaded(self) -> list[tuple[int, str]]:
        return list(self._models)

    def model(self, version: int, dtype: str | None = None) -> Any:
        """The model of `version` computing in `dtype` (default: the configured one). When the
        cache is full, the least recently used model of the same architecture and dtype gets
        the new version's weights in place (`protocol.lm.reload_weights`) instead of a new
        model being built: a new version every few seconds costs milliseconds, not ~0.1 s."""
        key = (version, dtype or self.dtype)
        hit = self._models.get(key)
        if hit is not None:
            self._models.move_to_end(key)
            return hit[0]
        started = time.perf_counter()
        try:
            path = Path(self.fetch(version))
            config_json = (path / "config.json").read_text()
            model = None
            if len(self._models) >= self.capacity:
                old_key, (old, old_config) = self._models.popitem(last=False)
                if old_key[1] == key[1] and old_config == config_json and reload_weights(old, path, self.device):
                    model = old
            if model is None:
                model = load_model(str(path), device=self.device, dtype=key[1])
        except ProtocolError as exc:
            raise JobError(f"policy version {version} is not available: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise JobError(f"policy version {version} cannot be loaded: {exc}") from exc
        self._models[key] = (model, config_json)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        seconds = time.perf_counter() - started
        log.info("loaded policy version %d in %s (%.2f s)", version, key[1], seconds)
        if self.on_load:
            self.on_load(version, seconds)
        return model


class Prefetcher:
    """Background thread: long-poll the relays and download every new version."""

    def __init__(self, client: Any, stop: threading.Event, *, poll_s: float = 5.0,
                 on_version: Callable[[int], None] | None = None):
        self.client = client
        self.stop = stop
        self.poll_s = poll_s
        self.on_version = on_version
        self.newest: int | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True, name="verifier-prefetch")

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                retry_call(self._round, "prefetch", self.stop, retry_on=(ProtocolError, OSError), cap_s=30.0,
                           on_retry=log_failures(log, "prefetch"))
            except Stopped:
                return

    def _round(self) -> None:
        v = self.client.wait_for_version(self.newest, self.poll_s)
        if v is not None:
            self.client.fetch(v)
            self.newest = v
            if self.on_version:
                self.on_version(v)
