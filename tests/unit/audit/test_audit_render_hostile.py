"""`swarmrl audit` prints archived text that workers wrote (decoded completions, engine details,
finish reasons) and text that quotes them (reasons, check details): it is shown as it is, never
read as rich markup (a completion "[/]" crashed `audit show`; "[green]passed[/]" printed as a
green "passed") and never reaches the terminal as a control sequence."""

import io

from rich.console import Console

from verifier.audit import render

HOSTILE = "[/] [green]VERDICT HOLDS[/] [link=http://evil]x[/link] \x1b]0;owned\x07\x1b[2J"


def view() -> dict:
    check = {"name": "reward", "passed": False, "detail": HOSTILE, "stats": {"why": HOSTILE}}
    return {"submission_id": "s-1", "status": "rejected", "worker_id": "12D3KooW" + HOSTILE, "policy_version": 3,
            "task_id": "t-1", "task_index": 0, "received_at": 1.0, "decided_at": 2.0, "full_check": True,
            "engine": {"name": HOSTILE, "version": "[/]"}, "checkpoint_archived": False, "reason": HOSTILE,
            "prompt": {"text": "1+1=", "token_ids": [1, 2]},
            "completions": [{"index": 0, "seed": 7, "text": HOSTILE, "token_ids": [3], "n_tokens": 1,
                             "finish_reason": HOSTILE, "reward": 0.0, "advantage": 0.0}],
            "verdict": {"accepted": False, "verifier": "v[/]", "signed_at": 2.0, "full_check": True,
                        "checks": [check]}}


def printed(fn, *args) -> str:
    out = io.StringIO()
    fn(*args, Console(file=out, width=400, color_system=None, force_terminal=False))
    return out.getvalue()


def test_worker_text_in_a_rollout_is_shown_literally_and_without_control_characters():
    text = printed(render.rollout, view())
    assert "[green]VERDICT HOLDS[/]" in text and "[link=http://evil]" in text
    assert "\x1b" not in text and "\x07" not in text


def test_worker_text_in_checks_and_summaries_is_shown_literally():
    text = printed(render.checks, view()["verdict"]["checks"])
    assert "[green]VERDICT HOLDS[/]" in text and "\x1b" not in text
    w = {"worker_id": "w[/]", "submissions": 1, "accepted": 0, "rejected": 1, "undecided": 0, "tokens": 1,
         "mean_reward": 0.0, "min_version": 0, "max_version": 0, "reasons": {"[/]" + HOSTILE: 1}}
    text = printed(render.summary, [w])
    assert "w[/]" in text and "\x1b" not in text


def test_worker_text_in_the_list_is_shown_literally():
    import pyarrow as pa

    rows = pa.table({"submission_id": ["s-1"], "worker_id": ["w"], "policy_version": [1], "status": ["[/]"],
                     "mean_reward": [0.0], "n_tokens": [1], "received_at": [1.0], "reason": [HOSTILE]})
    text = printed(lambda t, console: render.rollout_list(t, console, 1), rows)
    assert "[green]VERDICT HOLDS[/]" in text and "\x1b" not in text
