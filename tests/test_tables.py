"""Result tables for reviewers (analysis.report.tables): what the HTML shows, and that the
numbers underneath are the computed ones."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from analysis.report.tables import EMPTY, is_p_value_column, result_table


def _cells(html: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    return [[c.strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, flags=re.S)] for r in rows]


def test_empty_cells_small_p_values_and_decimals() -> None:
    df = pd.DataFrame({"group": ["vehicle", "diazepam 5 mg/kg", "XBD173"], "n_animals": [8, 8, 7],
                       "pct_vs_vehicle": [np.nan, -13.04567, 2.5], "p_vs_vehicle_holm": [np.nan, 4e-6, 0.51234],
                       "slope_lrt_p": [0.0004, 0.001, 1.0]})
    cells = _cells(result_table(df).to_html())
    assert cells[0] == ["group", "n_animals", "pct_vs_vehicle", "p_vs_vehicle_holm", "slope_lrt_p"]  # no index column
    assert cells[1] == ["vehicle", "8", EMPTY, EMPTY, "&lt;0.001"]
    assert cells[2] == ["diazepam 5 mg/kg", "8", "-13.046", "&lt;0.001", "0.001"]
    assert cells[3] == ["XBD173", "7", "2.500", "0.512", "1.000"]


def test_the_numbers_underneath_are_unchanged_and_the_html_repeatable() -> None:
    df = pd.DataFrame({"estimate": [0.123456789, np.nan], "p": [1e-9, 0.2]}, index=["a", "b"])
    style = result_table(df, digits=2)
    assert style.data is df and df.loc["a", "estimate"] == 0.123456789
    html = style.to_html()
    assert _cells(html)[1] == ["a", "0.12", "&lt;0.01"]  # a named index is kept
    assert result_table(df.copy(), digits=2).to_html() == html  # no random ids
    assert result_table(df.assign(p=[1e-9, 0.3]), digits=2).to_html() != html


def test_text_is_escaped_and_not_a_frame_is_refused() -> None:
    html = result_table(pd.DataFrame({"term": ["dose < 1 & day"], "p_value": [0.5]})).to_html()
    assert "dose &lt; 1 &amp; day" in html
    with pytest.raises(TypeError, match="DataFrame"):
        result_table(pd.Series([1.0, 2.0]))  # type: ignore[arg-type]


@pytest.mark.parametrize("name, is_p", [("p", True), ("p_value", True), ("p_vs_vehicle_adjusted", True),
                                        ("slope_lrt_p", True), ("pct_vs_vehicle", False), ("power_adjusted", False),
                                        ("sample_period", False), (3, False)])
def test_p_value_columns_by_name(name: object, is_p: bool) -> None:
    assert is_p_value_column(name) is is_p
