"""Learning about versions from untrusted sources: signed manifests and long-polls.

`fetch_manifest` asks sources (best first) for one version's manifest; `wait_for_newer`
long-polls every usable source at once (`/v1/versions/latest?after=N&wait_s=S`) and
returns the first manifest newer than N that verifies, cancelling the other polls. Both
trust only the operator key: a manifest whose signature, consistency, version or run does
not check out marks its source hostile (`selection.Sources.hostile`), and the search goes
on with the others. Nothing here downloads shards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from protocol import routes
from protocol.envelope import Envelope
from protocol.errors import MessageError, SignatureError
from protocol.http import tls_context
from protocol.identity import PublicKey
from protocol.manifest import open_manifest
from protocol.messages import PolicyManifest
from shardcast.errors import VersionUnavailable
from shardcast.selection import Sources

log = logging.getLogger("shardcast.watch")
POLL_CHUNK_S = 50.0   # one long-poll request never asks a source to hold it longer than this
MAX_RETRY_S = 2.0     # an unreachable source is asked again at least this often


@dataclass(frozen=True)
class Announced:
    """A verified manifest and the source it came from."""

    envelope: Envelope
    manifest: PolicyManifest
    source: str

    @property
    def version(self) -> int:
        return self.manifest.version


def verify_manifest_bytes(data: bytes, operator_key: PublicKey,
                          run_id: str | None) -> tuple[Envelope, PolicyManifest]:
    """Parse and verify a served manifest. Raises MessageError or SignatureError."""
    try:
        env = Envelope.model_validate_json(data)
    except ValidationError as exc:
        raise MessageError(f"not a signed manifest: {exc.errors()[:1]}") from exc
    manifest = open_manifest(env, operator_key)
    for entry in manifest.files:
        if any(part.startswith(".") for part in entry.path.split("/")):
            # Hidden names are shardcast's own bookkeeping (.manifest.json, .verified) and
            # are never published (build_manifest skips them).
            raise MessageError(f"manifest lists a hidden path {entry.path!r}")
    if run_id is not None and manifest.run_id != run_id:
        raise SignatureError(f"manifest is for run {manifest.run_id!r}, not {run_id!r}")
    return env, manifest


def fetch_manifest(http: httpx.Client, sources: Sources, operator_key: PublicKey, version: int,
                   run_id: str | None = None, timeout_s: float = 15.0) -> Announced:
    """The verified manifest of `version` from the best source that holds it."""
    tried: list[str] = []
    for url in sources.ranked():
        tried.append(url)
        try:
            resp = http.get(url + routes.SC_MANIFEST.format(version=version), timeout=timeout_s)
        except httpx.HTTPError as exc:
            sources.failure(url, f"manifest {version}: {type(exc).__name__}: {exc}")
            continue
        if resp.status_code == 404:
            continue
        if resp.status_code != 200:
            sources.failure(url, f"manifest {version}: HTTP {resp.status_code}")
            continue
        try:
            env, manifest = verify_manifest_bytes(resp.content, operator_key, run_id)
            if manifest.version != version:
                raise SignatureError(f"asked for version {version}, got a manifest of "
                                     f"{manifest.version}")
        except (MessageError, SignatureError) as exc:
            log.warning("source %s served a bad manifest for version %d: %s; avoiding it",
                        url, version, exc)
            sources.hostile(url, f"bad manifest: {exc}")
            continue
        return Announced(env, manifest, url)
    raise VersionUnavailable(f"no source has a valid manifest for version {version} "
                             f"(asked: {', '.join(tried) or 'none usable'})")


Also = Callable[[int, float], Awaitable["Announced | None"]]


def wait_for_newer(sources: Sources, operator_key: PublicKey, after: int | None, timeout_s: float,
                   run_id: str | None = None, also: Also | None = None) -> Announced | None:
    """The newest verified manifest with version > `after` that any source announces within
    `timeout_s` (None: nothing newer in time). Runs its own event loop in the calling thread.
    `also(after, deadline)`, when given, is one more racer (e.g. the libp2p swarm's version
    announcements): a coroutine returning a verified Announced newer than `after`, or None
    when it has nothing by `deadline` (time.monotonic())."""
    after_v = -1 if after is None else after
    return asyncio.run(_race(sources, operator_key, after_v, timeout_s, run_id, also))


async def _race(sources: Sources, key: PublicKey, after: int, timeout_s: float,
                run_id: str | None, also: Also | None = None) -> Announced | None:
    deadline = time.monotonic() + max(0.0, timeout_s)
    urls = list(sources.urls)
    limits = httpx.Limits(max_connections=len(urls) + 1)
    async with httpx.AsyncClient(limits=limits, verify=tls_context()) as http:
        tasks = [asyncio.create_task(_poll_one(http, sources, url, key, after, deadline, run_id))
                 for url in urls]
        if also is not None:
            tasks.append(asyncio.create_task(also(after, deadline)))
        try:
            for fut in asyncio.as_completed(tasks):
                found = await fut
                if found is not None:
                    return found
            return None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _poll_one(http: httpx.AsyncClient, sources: Sources, url: str, key: PublicKey, after: int,
                    deadline: float, run_id: str | None) -> Announced | None:
    delay = 0.25
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if sources.is_hostile(url):
            await asyncio.sleep(min(left, 5.0))
            continue
        wait = min(left, POLL_CHUNK_S)
        asked_at = time.monotonic()
        try:
            resp = await http.get(url + routes.SC_LATEST, params={"after": after, "wait_s": wait},
                                  timeout=httpx.Timeout(wait + 10, connect=5.0))
        except httpx.HTTPError as exc:
            sources.failure(url, f"long-poll: {type(exc).__name__}: {exc}")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        if resp.status_code in (200, 204):
            sources.alive(url)
        if resp.status_code == 204:
            if time.monotonic() - asked_at < wait / 2:  # a source that does not hold polls
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, MAX_RETRY_S)
            continue
        if resp.status_code != 200:
            sources.failure(url, f"long-poll: HTTP {resp.status_code}")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        try:
            env, manifest = verify_manifest_bytes(resp.content, key, run_id)
        except (MessageError, SignatureError) as exc:
            log.warning("source %s announced a bad manifest: %s; avoiding it", url, exc)
            sources.hostile(url, f"bad manifest: {exc}")
            continue
        if manifest.version <= after:
            sources.failure(url, f"long-poll answered version {manifest.version} <= {after}")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            continue
        return Announced(env, manifest, url)


def list_versions(http: httpx.Client, url: str, timeout_s: float = 10.0) -> list[int]:
    """The versions a source says it holds (unverified hints; the manifests are checked later)."""
    resp = http.get(url + routes.SC_VERSIONS, timeout=timeout_s)
    resp.raise_for_status()
    data = resp.json()
    versions = data.get("versions", []) if isinstance(data, dict) else []
    return sorted({int(v) for v in versions if isinstance(v, int) and v >= 0})
