"""The scorer sandbox: worker text is scored in confined, throw-away processes.

Every reward that counts is computed here, by the coordinator at intake
(`coordinator.taskbook`), by the verifier's reward check (`verifier.checks.reward`) and by
`swarmrl audit reverify` (through the same check), so all three compute the same reward the
same way: `Sandbox.score(scorer, [ScoreItem(completion, answer, metadata), ...])` sends one
batch to one child and returns one `ScoreResult(reward, reason)` per item.

    host (coordinator / verifier / audit)
      └─ zygote: `python -I`, exec'd (no host memory, so no key), minimal environment,
         │         new network namespace where allowed; imports and warms the scorers
         └─ child (forked per batch for impure scorers; pre-forked spares): confines itself,
                   then scores; talks to the host only through one socket (JSON frames)

**What it enforces on Linux** (`protocol.sandbox.confine`; `Sandbox.enforced` holds what the
first child reported, and the host logs it once):
- no key material or database handle: the zygote is a fresh interpreter that inherits only
  its control socket; each child closes every other descriptor and clears its environment;
- no file written anywhere (RLIMIT_FSIZE 0; Landlock: no write, create, remove, rename or
  truncate), no file read outside Python's install and the imported packages (Landlock), and
  when the host is root the child runs as `nobody` with no capability;
- no network: the zygote's empty network namespace (root, or where unprivileged user
  namespaces are allowed), Landlock's TCP fence (ABI >= 4), and a seccomp filter that allows
  only AF_UNIX sockets (this one needs no privilege);
- no new process (RLIMIT_NPROC 0 and seccomp), no signal to or tracing of another process
  (seccomp; Landlock scopes, ABI >= 6); limits on CPU (RLIMIT_CPU), memory (RLIMIT_AS),
  open files (RLIMIT_NOFILE) and core dumps (RLIMIT_CORE 0);
- a wall clock per item and per batch, enforced by the host with SIGKILL (`Limits`).

**What it cannot do:** without Landlock (Linux < 5.13, or a container runtime that blocks it)
a child can read world-readable files and, when the host is not root, the host's own files
(the key files!) and create empty files where its user may; without seccomp (another
architecture, or a runtime that forbids filters) and without namespaces, non-TCP network
traffic is possible; on other systems only the rlimits and the wall clock hold. Whatever
holds, a scorer that runs its input as code lets that input choose the rewards of its own
batch (one worker's own submission): the sandbox stops it from reaching anything else, and
the verifier's sampling check rejects text the policy did not generate.

Every scorer plugs in through `protocol.tasks` (a registered kind, `answer:...` with extraction
and math-verify comparison, reasoning-gym with each task's metadata, or a `<module>:<function>`
reference, allowed in a process by `SWARMRL_SCORER_MODULES=mypkg.rewards,...`) and runs here
unchanged; each item carries the task's metadata. Limits are a protocol rule (`protocol.sandbox.limits`).
"""

from __future__ import annotations

import os
import threading

from protocol.sandbox.errors import SandboxError
from protocol.sandbox.limits import DEFAULT_LIMITS, Limits
from protocol.sandbox.pool import Sandbox, ScoreItem, ScoreResult

__all__ = ["DEFAULT_LIMITS", "SCORER_MODULES_ENV", "Limits", "Sandbox", "SandboxError", "ScoreItem", "ScoreResult",
           "scorer_modules", "shared"]

_shared: Sandbox | None = None
_shared_lock = threading.Lock()


SCORER_MODULES_ENV = "SWARMRL_SCORER_MODULES"


def scorer_modules() -> tuple[str, ...]:
    """The modules whose functions the operator allows as `<module>:<function>` scorers in this
    process: the comma-separated `SWARMRL_SCORER_MODULES` (empty: none). An environment
    variable rather than a field of each role's config because the sandbox is process-wide
    and every role that scores (coordinator, verifier, trainer, audit) must allow the same."""
    return tuple(m.strip() for m in os.environ.get(SCORER_MODULES_ENV, "").split(",") if m.strip())


def shared() -> Sandbox:
    """The process's sandbox with the protocol's limits, started on first use. One per process,
    like a thread pool: the verifier, the audit and the trainer's evaluation use it; the
    coordinator's TaskBook too unless given its own. It allows the `scorer_modules()`."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox(DEFAULT_LIMITS, allow_modules=scorer_modules())
        return _shared
