"""`limit` cannot turn the dashboard's shared answers into one database aggregation per request:
answers are computed for the endpoint's default or its most, and any other limit is a slice."""

from coordinator.dashboard import views
from tests.unit.dashboard.conftest import OPERATOR_TOKEN
from tests.unit.dashboard.test_dashboard_api import get, scripted_run


def test_cycling_limit_reuses_the_cached_answers_and_each_slice_is_right(make_coordinator, monkeypatch):
    fresh = make_coordinator(dashboard_cache_s=0.0)
    scripted_run(fresh)
    for v in (2, 3):
        assert fresh.publish(v).status_code == 200
    expected = {k: (get(fresh, f"/curve?limit={k}"), get(fresh, f"/versions?limit={k}")["versions"],
                    get(fresh, f"/rejections?limit={k}")) for k in (1, 2, 3, 7, 600)}

    calls = {"curve": 0, "versions": 0, "rejections": 0}
    for name, fn in (("curve", "curve_data"), ("versions", "version_rows"), ("rejections", "rejections")):
        real = getattr(views, fn)
        monkeypatch.setattr(views, fn, lambda *a, _real=real, _name=name: calls.__setitem__(_name, calls[_name] + 1)
                            or _real(*a))
    s = make_coordinator(dashboard_cache_s=600.0)
    scripted_run(s)
    for v in (2, 3):
        assert s.publish(v).status_code == 200
    for k in list(range(1, 60)) + [600, 601, 602]:
        for path in ("/curve", "/versions", "/rejections"):
            get(s, f"{path}?limit={k}", token=None if k % 2 else OPERATOR_TOKEN)
    assert all(n <= 2 for n in calls.values()), calls  # the default's answer and the most's, once each
    for k, (curve, versions, rejections) in expected.items():
        assert [p["version"] for p in get(s, f"/curve?limit={k}")] == [p["version"] for p in curve], k
        assert [v["version"] for v in get(s, f"/versions?limit={k}")["versions"]] == \
            [v["version"] for v in versions], k
        assert len(get(s, f"/rejections?limit={k}")) == len(rejections), k
