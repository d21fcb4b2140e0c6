"""What `swarmrl audit` prints: the verdict line of a re-verification, and the thresholds it uses."""

import io

import pytest
from rich.console import Console

from verifier.audit import render
from verifier.audit.commands import load_thresholds
from verifier.audit.errors import AuditError
from verifier.audit.reverify import Reverification


def rv(recorded: str, accepted: bool, **kw) -> Reverification:
    checks = [{"name": "signatures", "passed": False, "stats": {}, "detail": "signature does not match"},
              {"name": "proof", "passed": accepted, "stats": {"failed_chunks": 0 if accepted else 2}, "detail": ""}]
    base = dict(submission_id="s-1", worker_id="12D3KooWx", policy_version=3, recorded_status=recorded,
                recorded_full_check=False, recorded_checks=[{"name": "proof", "passed": True}], recorded_reason="",
                recorded_signature="valid", accepted=accepted, checks=checks[1:] if accepted else checks,
                reason="" if accepted else "signatures: signature does not match", checkpoint="version 3: ok")
    base.update(kw)
    return Reverification(**base)


def printed(r: Reverification) -> str:
    out = io.StringIO()
    render.reverification(r, Console(file=out, width=200, color_system=None))
    return out.getvalue()


def test_the_verdict_line_says_whether_the_record_holds():
    assert rv("accepted", True).holds is True and "VERDICT HOLDS: recorded accepted" in printed(rv("accepted", True))
    broken = rv("accepted", False)
    text = printed(broken)
    assert broken.holds is False and "VERDICT DOES NOT HOLD: recorded accepted, re-verification rejects it" in text
    assert "signatures" in text and "failed_chunks=2" in text and "cheap check" in text
    none = rv("undecided", True, recorded_full_check=None)
    assert none.holds is None and "no recorded verdict; re-verification accepts it" in printed(none)
    assert rv("rejected", False).holds is True
    assert broken.as_dict()["holds"] is False


def test_thresholds_from_a_verifier_config_or_a_bare_table(tmp_path):
    from verifier.thresholds import CALIBRATED

    assert load_thresholds(None) == CALIBRATED
    cfg = tmp_path / "verifier.toml"
    cfg.write_text('coordinator_url = "http://x"\n[thresholds]\nexp_mismatch_frac = 0.2\n'
                   '[bf16_thresholds]\ngroup_mant_err_mean = 0.7\n')
    limits = load_thresholds(cfg)
    assert limits["float32"].exp_mismatch_frac == 0.2 and limits["bfloat16"].group_mant_err_mean == 0.7
    assert limits["bfloat16"].sampling_rel_tolerance == CALIBRATED["bfloat16"].sampling_rel_tolerance > 0
    bare = tmp_path / "t.toml"
    bare.write_text("sampling_tolerance = 0.5\n")
    limits = load_thresholds(bare)
    assert limits["float32"].sampling_tolerance == 0.5 and limits["bfloat16"] == CALIBRATED["bfloat16"]
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_threshold = 1\n")
    with pytest.raises(AuditError, match="--thresholds"):
        load_thresholds(bad)
