"""Selecting archived rollouts: the command line's spellings and the row filter."""

import pyarrow as pa
import pytest

from verifier.audit.errors import AuditError
from verifier.audit.filters import Filter, apply, parse_time, parse_versions, resolve_workers

NOW = 1_800_000_000.0


def table() -> pa.Table:
    rows = [
        ("s1", "12D3KooWAAAAaaaa1", 0, "accepted", 0.0, NOW - 3600),
        ("s2", "12D3KooWAAAAaaaa1", 1, "accepted", 0.5, NOW - 1800),
        ("s3", "12D3KooWBBBBbbbb2", 1, "rejected", 1.0, NOW - 600),
        ("s4", "12D3KooWBBBBbbbb2", 2, "undecided", None, NOW - 60),
        ("s5", "12D3KooWCCCCcccc3", 3, "accepted", 0.25, NOW - 10),
    ]
    cols = list(zip(*rows, strict=True))
    return pa.table({"submission_id": cols[0], "worker_id": cols[1], "policy_version": pa.array(cols[2], pa.int64()),
                     "status": cols[3], "mean_reward": pa.array(cols[4], pa.float64()),
                     "received_at": pa.array(cols[5], pa.float64())})


def ids(t: pa.Table) -> list[str]:
    return t.column("submission_id").to_pylist()


@pytest.mark.parametrize("text,expected", [("3", (3, 3)), ("2:5", (2, 5)), (":5", (None, 5)), ("2:", (2, None)),
                                           (None, (None, None)), ("", (None, None))])
def test_versions_spellings(text, expected):
    assert parse_versions(text) == expected


@pytest.mark.parametrize("bad", ["x", "1:y", "v3"])
def test_bad_versions_say_how_to_write_them(bad):
    with pytest.raises(AuditError, match="use N, A:B"):
        parse_versions(bad)


def test_time_spellings():
    assert parse_time("90s", NOW) == NOW - 90
    assert parse_time("15m", NOW) == NOW - 900
    assert parse_time("2h", NOW) == NOW - 7200
    assert parse_time("1d", NOW) == NOW - 86400
    assert parse_time("1795000000.5", NOW) == 1795000000.5
    assert parse_time("2027-01-15T08:00:00", NOW) == 1800000000.0  # naive ISO times are UTC
    assert parse_time("2027-01-15T09:00:00+01:00", NOW) == 1800000000.0
    assert parse_time(None, NOW) is None
    with pytest.raises(AuditError, match="ISO 8601"):
        parse_time("yesterday", NOW)


def test_no_filter_keeps_everything():
    assert ids(apply(table(), Filter())) == ["s1", "s2", "s3", "s4", "s5"]


def test_filters_combine():
    t = table()
    assert ids(apply(t, Filter(min_version=1, max_version=2))) == ["s2", "s3", "s4"]
    assert ids(apply(t, Filter(verdicts=("rejected", "undecided")))) == ["s3", "s4"]
    assert ids(apply(t, Filter(min_reward=0.25))) == ["s2", "s3", "s5"]          # no reward: never matches a bound
    assert ids(apply(t, Filter(max_reward=0.25))) == ["s1", "s5"]
    assert ids(apply(t, Filter(since=NOW - 1000))) == ["s3", "s4", "s5"]
    assert ids(apply(t, Filter(until=NOW - 1000))) == ["s1", "s2"]
    assert ids(apply(t, Filter(min_version=1, verdicts=("accepted",), since=NOW - 7200))) == ["s2", "s5"]
    assert ids(apply(t, Filter(limit=2))) == ["s4", "s5"]                        # the newest N
    assert ids(apply(t, Filter(verdicts=("accepted",), limit=1))) == ["s5"]


def test_workers_by_id_or_unique_prefix():
    t = table()
    assert ids(apply(t, Filter(workers=("12D3KooWBBBBbbbb2",)))) == ["s3", "s4"]
    assert ids(apply(t, Filter(workers=("12D3KooWC",)))) == ["s5"]
    assert ids(apply(t, Filter(workers=("12D3KooWA", "12D3KooWC")))) == ["s1", "s2", "s5"]
    assert ids(apply(t, Filter(workers=("12D3KooWZZZZ",)))) == []                # unknown: nothing, not an error
    assert ids(apply(t, Filter(workers=("12D3K",)))) == []                       # under 6 characters: exact only
    with pytest.raises(AuditError, match="matches 3 workers"):
        resolve_workers(t, ("12D3KooW",))


def test_unknown_verdict_is_refused():
    with pytest.raises(AuditError, match="accepted, rejected, undecided"):
        apply(table(), Filter(verdicts=("maybe",)))
