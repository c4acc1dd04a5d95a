"""trainer/expressions.rises_with: which declared outcomes an expression grows with, read from sqlglot's parse."""

import pytest

from cambrian.trainer.expressions import rises_with

REF = "ratings.rating"


@pytest.mark.parametrize("text", [
    "rating", "ratings.rating", "rating >= 4", "4 <= rating", "COALESCE(rating, 0)", "LEAST(rating, 1)",
    "GREATEST(rating, 0)", "CAST(rating AS DOUBLE) / 5", "LN(1 + rating)", "(rating - 1) / 4.0", "2 * rating",
    "ROUND(rating, 1)",
])
def test_rising_functions_of_the_column(text):
    assert rises_with(text, REF)


@pytest.mark.parametrize("text", [
    "-rating", "1 - rating", "rating * -2", "rating / -1", "rating <= 3", "hate = 0", "rating = 1", "other.rating",
    "rating + other.x", "CASE WHEN rating > 3 THEN 1 ELSE 0 END", "select 1", "rating >=", "1",
    "LEAST(rating, other.x)", "x" * 3000,
])
def test_anything_else_is_not_read_as_rising(text):
    assert not rises_with(text, REF)


def test_a_flag_equal_to_one_rises_with_the_flag_only_when_it_is_a_flag():
    assert rises_with("liked = 1", "ratings.liked", flag=True)
    assert not rises_with("liked = 1", "ratings.liked")
    assert not rises_with("liked = 0", "ratings.liked", flag=True)
