"""Learning about versions from untrusted sources: signed manifests and long-polls.

`fetch_manifest` asks sources (best first, hedged: the next is asked too when one is slow
to answer) for one version's manifest; `wait_for_newer`
long-polls every usable source at once (`/v1/versions/latest?after=N&wait_s=S`) and
returns the newest manifest newer than N that verifies (the first one, plus whatever newer
the other polls bring within a short settle window), cancelling the other polls. Both
trust only the operator key: a manifest whose signature, consistency, version or run does
not check out marks its source hostile (`selection.Sources.hostile`), and the search goes
on with the others. Nothing here downloads shards.

Every request is bounded (shardcast.bounded): identity encoding, a byte cap, one deadline
per answer; `wait_for_newer` returns by its own deadline whatever the sources do. A source
that fails, drips, bloats or compresses its answer is benched like an unreachable one; error
messages and logs quote at most a short prefix of what a source sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from protocol import routes
from protocol.envelope import Envelope
from protocol.errors import MessageError, SignatureError
from protocol.identity import PublicKey
from protocol.manifest import open_manifest
from protocol.messages import PolicyManifest
from shardcast.bounded import (
    MAX_LISTING_BYTES, MAX_MANIFEST_BYTES, SOURCE_ERRORS, get_bounded, new_client, run_bounded,
    short,
)
from shardcast.errors import VersionUnavailable
from shardcast.selection import Sources

log = logging.getLogger("shardcast.watch")
POLL_CHUNK_S = 50.0   # one long-poll request never asks a source to hold it longer than this
ANSWER_S = 10.0       # after the time a source may hold a poll, this long for its whole answer
POLL_MARGIN_S = 2.0   # a poll is held at most this much (or half the time left) short of the deadline
MIN_POLL_S = 0.25     # with less time left, no new poll is sent
MAX_RETRY_S = 2.0     # an unreachable source is asked again at least this often
HEDGE_S = 1.0         # a manifest request not answered this soon: the next source is asked too
SETTLE_S = 0.5        # after the first newer manifest, how long the other polls may still bring a newer one
SETTLE_TICK_S = 0.05  # ... re-checking this often whether a usable source is left to wait for


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
    """Parse and verify a served manifest. Raises MessageError or SignatureError, whose
    message quotes none of the input (it came from an untrusted source and may be huge)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise MessageError(f"a manifest of {len(data)} bytes is over the {MAX_MANIFEST_BYTES} accepted")
    try:
        env = Envelope.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False, include_context=False)[:1]
        raise MessageError(f"not a signed manifest: {short(first)}") from None
    manifest = open_manifest(env, operator_key)
    for entry in manifest.files:
        if any(part.startswith(".") for part in entry.path.split("/")):
            # Hidden names are shardcast's own bookkeeping (.manifest.json, .verified) and
            # are never published (build_manifest skips them).
            raise MessageError(f"manifest lists a hidden path {short(entry.path, 80)!r}")
    if run_id is not None and manifest.run_id != run_id:
        raise SignatureError(f"manifest is for run {short(manifest.run_id, 80)!r}, not {run_id!r}")
    return env, manifest


def fetch_manifest(sources: Sources, operator_key: PublicKey, version: int,
                   run_id: str | None = None, timeout_s: float = 15.0,
                   hedge_s: float = HEDGE_S) -> Announced:
    """The verified manifest of `version` from the best source that holds it; each source
    is given `timeout_s` for its whole answer (at most MAX_MANIFEST_BYTES). Sources are asked
    best first, the next one `hedge_s` after the last without waiting for its answer (and at
    once after a failure or a "not here"); the first manifest that verifies wins and the other
    requests are cancelled. Asked one after the other, a source ranked first that dripped its
    answer held every call its whole `timeout_s` (15 s) before the next was asked."""
    return run_bounded(lambda http: _fetch_manifest(http, sources, operator_key, version, run_id,
                                                    timeout_s, hedge_s))


async def ask_manifest(http: httpx.AsyncClient, sources: Sources, url: str, operator_key: PublicKey,
                       version: int, run_id: str | None, timeout_s: float) -> Announced | None:
    """`version`'s verified manifest from `url` alone; None when it did not serve one (it
    answered "not here", failed or was late: ranked down; or it served a manifest that does
    not verify or is of another version: marked hostile)."""
    try:
        resp = await get_bounded(http, url + routes.SC_MANIFEST.format(version=version),
                                 max_bytes=MAX_MANIFEST_BYTES, timeout_s=timeout_s)
    except SOURCE_ERRORS as exc:
        _failed(sources, url, f"manifest {version}", exc)
        return None
    if resp.status == 404:
        return None
    if resp.status != 200:
        sources.failure(url, f"manifest {version}: HTTP {resp.status}")
        return None
    try:
        env, manifest = verify_manifest_bytes(resp.body, operator_key, run_id)
        if manifest.version != version:
            raise SignatureError(f"asked for version {version}, got a manifest of "
                                 f"{manifest.version}")
    except (MessageError, SignatureError) as exc:
        log.warning("source %s served a bad manifest for version %d: %s; avoiding it",
                    url, version, exc)
        sources.hostile(url, f"bad manifest: {exc}")
        return None
    return Announced(env, manifest, url)


async def _fetch_manifest(http: httpx.AsyncClient, sources: Sources, operator_key: PublicKey,
                          version: int, run_id: str | None, timeout_s: float,
                          hedge_s: float = HEDGE_S) -> Announced:
    todo = sources.ranked()
    tried: list[str] = []
    running: set[asyncio.Task] = set()
    try:
        while todo or running:
            if todo:
                url = todo.pop(0)
                tried.append(url)
                running.add(asyncio.create_task(
                    ask_manifest(http, sources, url, operator_key, version, run_id, timeout_s)))
            done, running = await asyncio.wait(running, timeout=max(0.0, hedge_s) if todo else None,
                                               return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                found = fut.result()
                if found is not None:
                    return found
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    raise VersionUnavailable(f"no source has a valid manifest for version {version} "
                             f"(asked: {', '.join(tried) or 'none usable'})")


def _failed(sources: Sources, url: str, what: str, exc: BaseException) -> None:
    """A source's transport failure, refused answer or missed deadline: benched, and ranked
    down (a source that drips or bloats its answers is as useless as a dead one)."""
    sources.failure(url, f"{what}: {type(exc).__name__}: {short(exc)}")


Also = Callable[[int, float], Awaitable["Announced | None"]]


def wait_for_newer(sources: Sources, operator_key: PublicKey, after: int | None, timeout_s: float,
                   run_id: str | None = None, also: Also | None = None,
                   settle_s: float = SETTLE_S) -> Announced | None:
    """The newest verified manifest with version > `after` that any source announces within
    `timeout_s` (None: nothing newer in time). Returns within `timeout_s` (plus the
    scheduling of a fraction of a second) whatever the sources do: every poll in flight is
    cancelled at the deadline. Runs its own event loop in the calling thread.

    Newest, not first: once a verified newer manifest arrives, the other polls still in flight
    on usable sources are given up to `settle_s` (ending early when none is left) to announce
    a newer one. A source's answer to `after=N` is its newest version; taking the
    first one verified let a fast relay walk its clients forward one genuine version per call
    (answering N + 1 at once) while a farther honest relay announced the newest.

    `also(after, deadline)`, when given, is one more racer (e.g. the libp2p swarm's version
    announcements): a coroutine returning a verified Announced newer than `after`, or None
    when it has nothing by `deadline` (time.monotonic()); it must not wait on threads that
    outlive it (the loop's default executor is joined when the loop closes)."""
    after_v = -1 if after is None else after
    return asyncio.run(_race(sources, operator_key, after_v, timeout_s, run_id, also, settle_s))


async def _race(sources: Sources, key: PublicKey, after: int, timeout_s: float,
                run_id: str | None, also: Also | None = None,
                settle_s: float = SETTLE_S) -> Announced | None:
    deadline = time.monotonic() + max(0.0, timeout_s)
    urls = list(sources.urls)
    async with new_client(len(urls) + 1) as http:
        polls = {asyncio.create_task(_poll_one(http, sources, url, key, after, deadline, run_id)): url
                 for url in urls}
        tasks = list(polls)
        if also is not None:
            tasks.append(asyncio.create_task(also(after, deadline)))
        pending = set(tasks)
        best: Announced | None = None
        settle_at = deadline

        def worth_waiting() -> bool:
            """A poll still running on a source usable now (one benched or found hostile
            meanwhile is not waited for). Not `also`: it answers at once with the newest it
            knows, so while it runs it knows of nothing newer than `after`."""
            now = sources.now()
            return any(t in polls and sources.usable(polls[t], now) for t in pending)

        try:
            while pending:
                left = min(deadline, settle_at) - time.monotonic()
                if left <= 0 or (best is not None and not worth_waiting()):
                    break
                if best is not None:
                    left = min(left, SETTLE_TICK_S)
                done, pending = await asyncio.wait(pending, timeout=left,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    found = fut.result()
                    if found is not None and (best is None or found.version > best.version):
                        if best is None:
                            settle_at = min(deadline, time.monotonic() + max(0.0, settle_s))
                        best = found
            return best
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _poll_one(http: httpx.AsyncClient, sources: Sources, url: str, key: PublicKey, after: int,
                    deadline: float, run_id: str | None) -> Announced | None:
    delay = 0.25

    async def pause(seconds: float) -> None:
        await asyncio.sleep(min(seconds, max(0.0, deadline - time.monotonic())))

    while True:
        left = deadline - time.monotonic()
        if left < MIN_POLL_S:  # too short a poll to judge a source by: wait out the deadline
            await pause(left)
            return None
        if sources.is_hostile(url):
            await pause(5.0)
            continue
        # The source may hold the poll `wait` s, a margin short of the time left, and must have
        # answered by half that margin: a source that has not is late (a failure, ranked down),
        # rather than cut off by the caller's own deadline.
        margin = min(POLL_MARGIN_S, left / 2)
        wait = min(left - margin, POLL_CHUNK_S)
        asked_at = time.monotonic()
        try:
            resp = await get_bounded(http, url + routes.SC_LATEST, params={"after": after, "wait_s": wait},
                                     max_bytes=MAX_MANIFEST_BYTES, timeout_s=min(left - margin / 2, wait + ANSWER_S))
        except SOURCE_ERRORS as exc:
            _failed(sources, url, "long-poll", exc)
            await pause(delay)
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        if resp.status in (200, 204):
            sources.alive(url)
        if resp.status == 204:
            if time.monotonic() - asked_at < wait / 2:  # a source that does not hold polls
                await pause(delay)
                delay = min(delay * 2, MAX_RETRY_S)
            continue
        if resp.status != 200:
            sources.failure(url, f"long-poll: HTTP {resp.status}")
            await pause(delay)
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        try:
            env, manifest = verify_manifest_bytes(resp.body, key, run_id)
        except (MessageError, SignatureError) as exc:
            log.warning("source %s announced a bad manifest: %s; avoiding it", url, exc)
            sources.hostile(url, f"bad manifest: {exc}")
            continue
        if manifest.version <= after:
            # A source answers a poll with a version newer than `after` or not at all (204):
            # an older one, signed or not, is a replay; it would be polled (and its manifest
            # verified) again and again, so it is avoided like any source that lies.
            log.warning("source %s answered a long-poll for versions > %d with version %d; avoiding it",
                        url, after, manifest.version)
            sources.hostile(url, f"long-poll answered version {manifest.version} <= {after}")
            continue
        return Announced(env, manifest, url)


def list_versions(url: str, timeout_s: float = 10.0) -> list[int]:
    """The versions a source says it holds (unverified hints; the manifests are checked later).
    Raises RefusedAnswer, AnswerTimeout, httpx.HTTPError or ValueError (not a listing)."""
    return run_bounded(lambda http: ask_versions(http, url, timeout_s), connections=1)


async def ask_versions(http: httpx.AsyncClient, url: str, timeout_s: float) -> list[int]:
    """`list_versions` in the caller's event loop."""
    resp = await get_bounded(http, url + routes.SC_VERSIONS, max_bytes=MAX_LISTING_BYTES,
                             timeout_s=timeout_s)
    if resp.status != 200:
        raise ValueError(f"GET {routes.SC_VERSIONS}: HTTP {resp.status}")
    try:
        data = json.loads(resp.body)
    except RecursionError:  # nested deeper than the parser allows: a hostile listing, not a crash
        raise ValueError("the listing is nested too deeply to be one") from None
    versions = data.get("versions", []) if isinstance(data, dict) else []
    if not isinstance(versions, list):
        raise ValueError("the listing's versions are not a list")
    return sorted({v for v in versions if isinstance(v, int) and not isinstance(v, bool) and v >= 0})
