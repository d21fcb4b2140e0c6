"""A wrong integer answer never scores as right.

`answer:numeric` (and `answer:math`, which tries it first) accepted any number within 1e-6
relative of the reference: meant for rounded decimals (0.3333333 for 1/3), it also made every
integer within a millionth of an integer reference right, so for answers of a million or more
(counts, products, AIME-style sums) an off-by-one, or off-by-123 for 123456789, earned reward 1.
An integer reference is now matched exactly (in value: 42.0 and 1e2 still match 42 and 100).
"""

import pytest

from protocol.tasks.answers import math_equal, numeric_equal, parse_ref, score_spec


@pytest.mark.parametrize("got,want", [
    ("1000001", "1000000"), ("12345679", "12345678"), ("123456700", "123456789"), ("999999.9999", "1000000"),
    ("1,000,001", "1,000,000"), ("-2000001", "-2000000"),
])
def test_a_near_miss_of_an_integer_answer_is_wrong(got, want):
    assert numeric_equal(got, want) is False
    assert score_spec(parse_ref("answer:numeric"), f"<answer>{got}</answer>", want) == 0.0


def test_a_near_miss_of_an_integer_answer_is_wrong_under_math_too():
    assert math_equal("1000001", "1000000") is False


@pytest.mark.parametrize("got,want", [
    ("1000000", "1000000"), ("1000000.0", "1000000"), ("1e6", "1000000"), ("1,000,000", "1000000"),
    ("0.3333333", "1/3"), ("2.7182818", "2.718281828"), ("1000000.4", "1000000.5"),
])
def test_equal_values_and_rounded_decimals_still_match(got, want):
    assert numeric_equal(got, want) is True
