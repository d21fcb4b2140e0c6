"""The scorer sandbox against hostile completion text: every payload scores 0 with a reason,
reaches nothing outside its process, and the pool keeps serving.

The hostile scorer is `tests.hostile.scoring:eval_scorer`, which `eval`s its input like
reasoning-gym's spiral_matrix does, so these tests need no extra; the same payloads against the
real reasoning-gym scorers are at the end (skipped without the `tasks` extra). Without the
sandbox every payload here succeeds: `test_payloads_work_without_the_sandbox` shows it.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time

import pytest

from protocol.errors import MessageError
from protocol.identity import KeyPair
from protocol.sandbox import Limits, Sandbox, ScoreItem
from tests.hostile.scoring import EVAL_SCORER, PAYLOADS, eval_scorer, payload_text

LINUX = platform.system() == "Linux"
LIMITS = Limits(item_timeout_s=1.5, batch_timeout_s=6.0, memory_mb=256, spares=1, max_children=4)


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(LIMITS, allow_modules=("tests.hostile.scoring",)).start(warm=(EVAL_SCORER, "arithmetic"))
    yield sb
    sb.close()


@pytest.fixture
def open_dir(tmp_path):
    """A folder anyone may write to: only the sandbox stands between a payload and it."""
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    os.chmod(tmp_path, 0o755)
    return d


def score1(sb: Sandbox, text: str, answer: str = "42", scorer: str = EVAL_SCORER):
    return sb.score(scorer, [ScoreItem(text, answer)])[0]


def still_serves(sb: Sandbox) -> None:
    """An honest batch right after a hostile one is scored correctly."""
    got = sb.score(EVAL_SCORER, [ScoreItem("42", "42"), ScoreItem("6*7", "42"), ScoreItem("41", "42")])
    assert [r.reward for r in got] == [1.0, 0.1, 0.0]


def test_payloads_work_without_the_sandbox(tmp_path):
    """The hostile scorer really is hostile: in-process, the payloads write and read files."""
    target = tmp_path / "pwned"
    assert eval_scorer(PAYLOADS["file_write"](target), "42", {}) == 0.0
    assert target.read_text() == "pwned"
    key = tmp_path / "k.key"
    KeyPair.generate().save(key)
    assert eval_scorer(PAYLOADS["key_read"](key), "1", {}) == 0.1


def test_honest_batches_score_like_the_scorer_in_process(sandbox):
    assert [r.reward for r in sandbox.score("arithmetic", [ScoreItem("82", "82"), ScoreItem(" 82\n", "82"),
                                                           ScoreItem("81", "82")])] == [1.0, 1.0, 0.0]
    assert sandbox.score("arithmetic", []) == []
    still_serves(sandbox)


@pytest.mark.skipif(not LINUX, reason="the confinement report is Linux's")
def test_the_sandbox_reports_what_it_enforces(sandbox):
    e = sandbox.enforced
    assert {"CORE", "FSIZE", "NOFILE", "NPROC", "CPU", "AS"} <= set(e["rlimits"])
    assert e["seccomp"].startswith("only AF_UNIX sockets")
    if os.geteuid() == 0:
        assert "dropped from root" in e["user"]
        assert e["network"] == "new network namespace"


def test_a_file_write_scores_zero_and_writes_nothing(sandbox, open_dir):
    target = open_dir / "pwned"
    r = score1(sandbox, PAYLOADS["file_write"](target))
    assert r.reward == 0.0 and r.reason
    assert not target.exists()
    r = score1(sandbox, PAYLOADS["subprocess"](target))
    assert r.reward == 0.0 and r.reason
    assert not target.exists() and os.listdir(open_dir) == []
    still_serves(sandbox)


def test_key_files_and_other_files_cannot_be_read(sandbox, tmp_path):
    key = tmp_path / "coordinator.key"
    KeyPair.generate().save(key)  # mode 0600, like every key file
    public = tmp_path / "notes.txt"
    public.write_text("readable by anyone")
    os.chmod(public, 0o644)
    os.chmod(tmp_path, 0o755)
    for path in (key, public):
        r = score1(sandbox, PAYLOADS["key_read"](path), answer="1")
        assert r.reward == 0.0, path
        assert "Error" in r.reason
    still_serves(sandbox)


def test_no_environment_or_descriptor_of_the_host_reaches_a_scorer(tmp_path, monkeypatch):
    secret = tmp_path / "secret.key"
    secret.write_text("NEEDLE-7f3a")
    monkeypatch.setenv("SWARMRL_TEST_SECRET", "hunter2")
    with open(secret) as held:  # the host holds the file open while the sandbox starts and scores
        sb = Sandbox(LIMITS, allow_modules=("tests.hostile.scoring",)).start(warm=(EVAL_SCORER,))
        try:
            assert eval_scorer(PAYLOADS["inherited_fds"]("NEEDLE-7f3a"), "1", {}) == 0.1  # it would find it
            assert score1(sb, PAYLOADS["inherited_fds"]("NEEDLE-7f3a"), answer="1").reward == 0.0
            assert score1(sb, PAYLOADS["environ"]("SWARMRL_TEST_SECRET"), answer="hunter2").reward == 0.0
        finally:
            sb.close()
        assert held.read() == "NEEDLE-7f3a"


def test_a_network_connect_scores_zero_and_connects_nowhere(sandbox):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.3)
    port = srv.getsockname()[1]
    try:
        r = score1(sandbox, PAYLOADS["network"](port))
        assert r.reward == 0.0 and r.reason
        with pytest.raises(TimeoutError):
            srv.accept()
    finally:
        srv.close()
    still_serves(sandbox)


@pytest.mark.parametrize("name, why", [
    ("infinite_loop", "timed out"),
    ("memory_bomb", "MemoryError"),
    ("fork_bomb", "Error"),
    ("crash", "died"),
    ("exit", "died"),
    ("huge_output", "bad output"),
    ("kill_others", ""),
])
def test_a_runaway_payload_scores_zero_with_a_reason_and_the_pool_recovers(sandbox, name, why):
    zygote = sandbox._zygote
    t0 = time.monotonic()
    r = score1(sandbox, PAYLOADS[name]())
    assert r.reward == 0.0
    assert why in r.reason
    assert time.monotonic() - t0 < LIMITS.item_timeout_s + 2.0
    assert sandbox._zygote is zygote and zygote.poll() is None  # nothing took the zygote down
    still_serves(sandbox)


def test_a_hostile_item_does_not_cost_the_other_items_of_its_batch(sandbox):
    got = sandbox.score(EVAL_SCORER, [ScoreItem("42", "42"), ScoreItem(PAYLOADS["infinite_loop"](), "42"),
                                      ScoreItem("40+2", "42"), ScoreItem(PAYLOADS["crash"](), "42"),
                                      ScoreItem("42", "42")])
    assert [r.reward for r in got] == [1.0, 0.0, 0.1, 0.0, 1.0]
    assert "timed out" in got[1].reason and "died" in got[3].reason


def test_a_batch_stops_at_its_time_limit(tmp_path):
    sb = Sandbox(Limits(item_timeout_s=0.5, batch_timeout_s=1.2, spares=1),
                 allow_modules=("tests.hostile.scoring",)).start(warm=(EVAL_SCORER,))
    try:
        t0 = time.monotonic()
        got = sb.score(EVAL_SCORER, [ScoreItem(PAYLOADS["infinite_loop"](), "42")] * 6)
        assert time.monotonic() - t0 < 2.5
        assert [r.reward for r in got] == [0.0] * 6
        assert all(r.reason for r in got)
    finally:
        sb.close()


def test_a_forged_result_frame_reaches_only_its_own_batch(sandbox):
    """Code run by an eval-ing scorer owns its process and may write its own result (the
    documented limit), but that process never scores another batch."""
    forged = sandbox.score(EVAL_SCORER, [ScoreItem(PAYLOADS["forge_frame"](), "42"), ScoreItem("41", "42")])
    assert forged[1].reward == 0.0
    after = sandbox.score(EVAL_SCORER, [ScoreItem("41", "42"), ScoreItem("nonsense", "42")])
    assert [r.reward for r in after] == [0.0, 0.0]


def test_garbage_from_a_scorer_scores_zero(sandbox):
    got = sandbox.score("tests.hostile.scoring:garbage_scorer",
                        [ScoreItem("nan", "1"), ScoreItem("big", "1"), ScoreItem("neg", "1"), ScoreItem("x", "1")])
    assert [r.reward for r in got] == [0.0] * 4
    assert all(r.reason for r in got)


def test_concurrent_batches_are_not_held_up_by_a_hostile_one(sandbox):
    hostile = threading.Thread(target=score1, args=(sandbox, PAYLOADS["infinite_loop"]()))
    hostile.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    still_serves(sandbox)
    assert time.monotonic() - t0 < 1.0
    hostile.join()


def test_a_dead_zygote_is_restarted(sandbox):
    sandbox._zygote.kill()
    sandbox._zygote.wait()
    still_serves(sandbox)


def test_unknown_or_unallowed_scorers_are_configuration_errors(sandbox):
    with pytest.raises(MessageError, match="no scorer"):
        sandbox.score("no such kind", [ScoreItem("1", "1")])
    with pytest.raises(MessageError, match="not told to allow"):
        sandbox.score("os:system", [ScoreItem("1", "1")])
    with pytest.raises(MessageError, match="cannot load"):
        sandbox.score("tests.hostile.scoring:no_such_function", [ScoreItem("1", "1")])


# -- the real eval-ing scorers of reasoning-gym -------------------------------------------------
GYM_EVAL = ["spiral_matrix", "string_insertion", "binary_matrix"]


@pytest.fixture(scope="module")
def gym_sandbox():
    pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (pip install -e '.[tasks]')")
    sb = Sandbox(LIMITS).start(warm=tuple(f"reasoning_gym:{d}" for d in GYM_EVAL))
    yield sb
    sb.close()


@pytest.mark.parametrize("dataset", GYM_EVAL)
def test_reasoning_gym_eval_scorers_run_payloads_harmlessly(gym_sandbox, dataset, open_dir):
    from protocol.tasks.gym import gym_scorer

    target = open_dir / f"{dataset}.pwned"
    scorer = gym_scorer(dataset)
    scorer(PAYLOADS["file_write"](target), "1 2 3", {})  # in-process: the scorer runs the payload
    assert target.exists()
    target.unlink()
    kind = f"reasoning_gym:{dataset}"
    for payload in (PAYLOADS["file_write"](target), PAYLOADS["infinite_loop"](), PAYLOADS["memory_bomb"](),
                    PAYLOADS["fork_bomb"](), PAYLOADS["crash"]()):
        r = gym_sandbox.score(kind, [ScoreItem(payload, "1 2 3")])[0]
        assert r.reward == 0.0
    assert not target.exists()
    assert gym_sandbox.score(kind, [ScoreItem("1 2 3", "1 2 3")])[0].reward == 1.0


def test_reasoning_gym_sympy_scorers_run_in_the_sandbox(gym_sandbox, open_dir):
    target = open_dir / "sympy.pwned"
    payload = f"__import__('os').system('touch {target}')"
    r = gym_sandbox.score("reasoning_gym:polynomial_multiplication", [ScoreItem(payload, "x**2")])[0]
    assert r.reward == 0.0
    assert not target.exists()


def test_score_runs_impure_scorers_in_the_shared_sandbox(open_dir):
    """`protocol.tasks.score` (the trainer's evaluation, the demo's warm-start) never runs an
    impure scorer in its own process."""
    pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (pip install -e '.[tasks]')")
    from protocol.tasks import score

    target = open_dir / "eval.pwned"
    assert score("reasoning_gym:spiral_matrix", "1 2 3", PAYLOADS["file_write"](target)) == 0.0
    assert score("reasoning_gym:spiral_matrix", "1 2 3", "(1,2,3)") == 0.1
    assert score("arithmetic", "82", "82") == 1.0  # pure: in-process
    assert not target.exists()


# -- a scorer's reason is worker-influenced text ---------------------------------------------------
def _unprintable(text: str) -> list[str]:
    import unicodedata

    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]


def test_a_scorers_reason_reaches_the_host_without_control_characters(sandbox):
    """The reason of a 0 is the scorer's exception, which quotes worker text (up to 160
    characters, and a child that ran the text writes its own frame): it goes into the signed
    verdict's reward stats (stored, archived, shown) and may be logged, so newlines, escape
    sequences and other invisible characters would forge log lines or terminal output. The
    host writes them as escapes; the reason stays within `reason_chars`."""
    nasty = "ok\nWARNING forged log line\r\x1b[2J\x00\u2028\u202e\x85end"
    raising = payload_text(f"raise ValueError({nasty!r})")
    forged = payload_text(  # a child taken over by its text writes any reason it likes
        "import os, json, struct\nb = json.dumps({'i': 0, 'r': 0.0, 'why': " + repr(nasty * 20) + "}).encode()\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, struct.pack('>I', len(b)) + b)\n"
        "    except OSError:\n        pass\nos._exit(0)")
    for text in (raising, forged):
        r = score1(sandbox, text)
        assert r.reward == 0.0 and r.reason
        assert _unprintable(r.reason) == [], repr(r.reason)
        assert "\\n" in r.reason and "\\x1b" in r.reason  # shown, not acted on
        assert len(r.reason) <= LIMITS.reason_chars
    assert "ValueError: ok\\nWARNING forged log line" in score1(sandbox, raising).reason
    still_serves(sandbox)
