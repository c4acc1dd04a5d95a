"""trainer/expressions: which declared outcomes an expression grows with (rises_with), read from sqlglot's parse,
and the one spelling of a reward expression that de-duplication compares (canonical_sql)."""

import pytest

from cambrian.trainer.expressions import canonical_sql, rises_with

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


# Spellings of one reward expression, and expressions next to them that compute something else.
SAME = [
    ("watch_seconds", "WATCH_SECONDS", '"Watch_Seconds"', "((watch_seconds))", "CAST(watch_seconds AS DOUBLE)",
     "CAST((Watch_Seconds) AS FLOAT8)"),
    ("watch_seconds >= 60", "60 <= watch_seconds", "(watch_seconds >= 60)", "CAST(watch_seconds >= 60 AS DOUBLE)",
     "watch_seconds >= 30 AND watch_seconds >= 60", "watch_seconds >= 60.0"),
    ("(watch_seconds + liked) * 2", "((watch_seconds + liked)) * 2"),
    ("1.0", "1", "(1)", "CAST(1 AS DOUBLE)", "1.00", "0.5 + 0.5"),
    ("LEAST(watch_seconds / 300.0, 1.0)", "least(WATCH_SECONDS/300.0, 1.0)"),
]
OTHER = ["watch_seconds + liked * 2", "watch_seconds > 60", "watch_seconds // 7", "watch_seconds / 7",
         "CAST(watch_seconds AS INTEGER)", "watch_seconds * 1.5", "TRY_CAST(watch_seconds AS DOUBLE) + liked"]


@pytest.mark.parametrize("spellings", SAME)
def test_spellings_of_one_expression_share_one_canonical_form_and_one_value(spellings):
    """What de-duplication treats as one reward must compute one column of labels: each spelling is evaluated
    as the trainer does (rowframe.evaluate: DuckDB, cast to DOUBLE) over the same rows."""
    import numpy as np
    import pandas as pd

    from cambrian.trainer.rowframe import evaluate

    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"watch_seconds": rng.integers(0, 400, 500), "liked": rng.integers(0, 2, 500)})
    assert len({canonical_sql(text) for text in spellings}) == 1, [canonical_sql(t) for t in spellings]
    values = evaluate(rows, {f"e{i}": text for i, text in enumerate(spellings)})
    for i in range(1, len(spellings)):
        np.testing.assert_array_equal(values[f"e{i}"], values["e0"])


def test_expressions_that_compute_something_else_keep_forms_of_their_own():
    forms = [canonical_sql(text) for group in SAME for text in group[:1]] + [canonical_sql(t) for t in OTHER]
    assert len(set(forms)) == len(forms), forms


@pytest.mark.parametrize("text", ["", "(", "a; b", "x" * 3000, None])
def test_text_that_does_not_parse_comes_back_as_it_is(text):
    assert canonical_sql(text) == text


def test_the_declared_label_stands_in_for_the_rows_label_column():
    """MovieLens declares its label as rating >= 4; the row's `label` column holds it as a DOUBLE
    (rowframe.RowFrame.join), so a reward that writes it out is the champion's `label` again."""
    import numpy as np
    import pandas as pd

    from cambrian.trainer.rowframe import evaluate

    declared = "ratings.rating >= 4"
    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"rating": rng.integers(1, 6, 400), "liked": rng.integers(0, 2, 400)})
    rows["label"] = evaluate(rows, {"label": "rating >= 4"})["label"]
    for spellings in (("label", "CAST(rating >= 4 AS DOUBLE)", "rating >= 4", "4 <= RATING", "(Label)", "rating >= 4.0"),
                      ("label * 2 + liked", "CAST(rating >= 4 AS DOUBLE) * 2 + liked")):
        assert len({canonical_sql(t, declared) for t in spellings}) == 1, [canonical_sql(t, declared) for t in spellings]
        values = evaluate(rows, {f"e{i}": t for i, t in enumerate(spellings)})
        for i in range(1, len(spellings)):
            np.testing.assert_array_equal(values[f"e{i}"], values["e0"])
    others = ["label", "rating >= 3", "rating > 4", "rating", "label + liked"]
    assert len({canonical_sql(t, declared) for t in others}) == len(others)
    # without the declaration, `label` is only a column name
    assert canonical_sql("label") != canonical_sql("rating >= 4")
