"""The verifier's limits are finite numbers: an operator's override cannot switch a check off
with an infinite (or NaN) limit, under which `within` passes everything."""

import math

import pytest
from pydantic import ValidationError

from verifier.config import VerifierConfig
from verifier.thresholds import Thresholds, overridden


@pytest.mark.parametrize("field", ["mant_err_mean", "completion_mant_err_mean", "group_mant_err_mean",
                                   "mant_err_median", "sampling_tolerance", "reward_tolerance",
                                   "higher_precision_floor"])
@pytest.mark.parametrize("value", [math.inf, math.nan, 1e400])
def test_a_non_finite_limit_is_refused(field, value):
    with pytest.raises(ValidationError):
        Thresholds(**{field: value})
    with pytest.raises(ValidationError):
        overridden("bfloat16", {field: value})


def test_a_config_override_with_inf_is_refused():
    with pytest.raises(ValidationError):
        VerifierConfig.model_validate({"thresholds": {"sampling_tolerance": math.inf}})


def test_finite_overrides_still_work():
    assert overridden("float32", {"mant_err_mean": 0.5}).mant_err_mean == 0.5
