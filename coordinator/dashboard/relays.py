"""Broadcast progress: what each relay the coordinator advertises holds, polled over HTTP.

Relays serve `GET /v1/versions` ({"versions": announced, "complete": fully verified}) and
Prometheus `GET /metrics` (shards verified, bytes served and fetched, verification
failures). The poller asks every relay for both, at most once per `min_interval_s` however
many dashboards are open (concurrent callers share one refresh), with a short timeout, and
keeps the last answer of each relay. A relay that does not answer is shown as unreachable
with the error, never as an error of the dashboard.

Relays are untrusted: their answers are shown as what they claim, for the operator's eyes;
nothing the coordinator decides depends on them. And an anonymous dashboard request makes the
coordinator do bounded work whatever a relay does: at most one poll per `min_interval_s`,
each request of it through shardcast.bounded (identity encoding only, a compressed body
refused unread, bodies capped at MAX_LISTING_BYTES / MAX_METRICS_BYTES), the whole poll of
every relay ended at `timeout_s` (a relay that drips or never answers is shown unreachable),
the metrics text parsed off the event loop, and errors kept to a short line.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from protocol import routes
from shardcast.bounded import MAX_LISTING_BYTES, SOURCE_ERRORS, get_bounded, new_client, short

METRICS = {"shardcast_shards_verified": "shards_verified", "shardcast_bytes_served": "bytes_served",
           "shardcast_bytes_fetched": "bytes_fetched", "shardcast_verify_failures": "verify_failures",
           "shardcast_fetch_errors": "fetch_errors", "shardcast_latest_version": "latest_version"}
MAX_METRICS_BYTES = 256 * 1024  # a relay's /metrics is a few KiB


@dataclass
class RelayState:
    url: str
    reachable: bool = False
    versions: list[int] = field(default_factory=list)
    complete: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    polled_at: float | None = None
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "reachable": self.reachable, "versions": self.versions, "complete": self.complete,
                "in_progress": sorted(set(self.versions) - set(self.complete)),
                "latest_complete": max(self.complete) if self.complete else None, "metrics": self.metrics,
                "error": self.error, "polled_at": self.polled_at, "latency_ms": self.latency_ms}


def parse_metrics(text: str) -> dict[str, float]:
    """The few relay metrics the dashboard shows, summed over labels."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            base = s.name[:-len("_total")] if s.name.endswith("_total") else s.name
            key = METRICS.get(base)
            if key is not None and not s.name.endswith("_created"):
                out[key] = out.get(key, 0.0) + float(s.value)
    return out


def _int_list(v: Any) -> list[int]:
    return sorted(int(x) for x in v if isinstance(x, int) and not isinstance(x, bool)) if isinstance(v, list) else []


class RelayPoller:
    def __init__(self, relays: list[str], *, min_interval_s: float = 3.0, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.time):
        self.states = {u.rstrip("/"): RelayState(u.rstrip("/")) for u in relays}
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._last = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> list[dict[str, Any]]:
        """Poll every relay if the last poll is older than min_interval_s; return all states.
        Returns within about `timeout_s` whatever the relays do."""
        if self.states and self.clock() - self._last >= self.min_interval_s:
            async with self._lock:
                if self.clock() - self._last >= self.min_interval_s:
                    async with new_client(2 * len(self.states)) as http:
                        await asyncio.gather(*(self._poll(http, s) for s in self.states.values()))
                    self._last = self.clock()
        return [s.as_dict() for s in self.states.values()]

    async def _poll(self, http, s: RelayState) -> None:
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        try:
            r = await get_bounded(http, s.url + routes.SC_VERSIONS, max_bytes=MAX_LISTING_BYTES,
                                  timeout_s=self.timeout_s)
            if r.status != 200:
                raise ValueError(f"GET {routes.SC_VERSIONS}: HTTP {r.status}")
            body = json.loads(r.body)
            m = await get_bounded(http, s.url + routes.METRICS, max_bytes=MAX_METRICS_BYTES,
                                  timeout_s=max(0.0, deadline - time.monotonic()))
            text = m.body.decode("utf-8", "replace") if m.status == 200 else ""
            metrics = await asyncio.to_thread(parse_metrics, text) if text else {}
        except (*SOURCE_ERRORS, ValueError) as exc:
            s.reachable, s.error = False, f"{type(exc).__name__}: {short(exc, 280)}"
        else:
            s.reachable, s.error = True, ""
            s.versions = _int_list(body.get("versions")) if isinstance(body, dict) else []
            s.complete = _int_list(body.get("complete")) if isinstance(body, dict) else []
            s.metrics = metrics
            s.latency_ms = round((time.perf_counter() - t0) * 1000, 1)
        s.polled_at = self.clock()
