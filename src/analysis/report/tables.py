"""Tables for reviewers: the notebooks' result tables as a reader of the HTML expects them.

A result table in a notebook is shown through :func:`result_table` rather than ``df.round(3)``:

* numbers keep ``digits`` decimals;
* an empty cell reads as a dash, not ``NaN`` (a vehicle group has no comparison with itself,
  a model that could not be fitted has no estimate);
* p-values below ``10 ** -digits`` read ``<0.001`` (for 3 digits), not ``0.000``;
* a plain 0, 1, 2 ... row index is not shown;
* the HTML is the same each time the same table is shown (no random element ids).

Only the display changes: :attr:`pandas.io.formats.style.Styler.data` is the frame itself,
with every value as it was computed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

__all__ = ["EMPTY", "is_p_value_column", "result_table"]

EMPTY = "\N{EN DASH}"  # shown in an empty cell

_P_COLUMN = re.compile(r"^p(_|$)|_p$")


def is_p_value_column(name: object) -> bool:
    """Does the column hold p-values (``p``, ``p_value``, ``p_vs_vehicle_holm``, ``slope_lrt_p``)?

    Examples
    --------
    >>> [is_p_value_column(c) for c in ["p", "p_value", "p_vs_vehicle", "slope_lrt_p", "pct_vs_vehicle", "power"]]
    [True, True, True, True, False, False]
    """
    return isinstance(name, str) and bool(_P_COLUMN.search(name))


def _p_formatter(digits: int) -> Callable[[object], str]:
    floor = 10.0 ** -digits

    def fmt(value: object) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return EMPTY
        v = float(value)  # type: ignore[arg-type]
        return f"&lt;{floor:.{digits}f}" if v < floor else f"{v:.{digits}f}"  # HTML: "<0.001"

    return fmt


def result_table(df: pd.DataFrame, digits: int = 3) -> Styler:
    """A result table formatted for the report (see the module's description).

    Parameters
    ----------
    df : pandas.DataFrame
        The table, as computed.
    digits : int
        Decimals shown for floating-point numbers; p-values below ``10 ** -digits`` read
        ``<0.001`` (for 3).

    Returns
    -------
    pandas.io.formats.style.Styler
        Rendered as HTML by Jupyter and nbconvert; ``.data`` is ``df`` unchanged.

    Examples
    --------
    >>> t = result_table(pd.DataFrame({"group": ["vehicle", "diazepam"], "pct": [np.nan, -12.3456],
    ...                         "p_value": [np.nan, 2e-5]}))
    >>> html = t.to_html()
    >>> "-12.346" in html and "&lt;0.001" in html and "NaN" not in html
    True
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"result_table() takes a pandas DataFrame, not {type(df).__name__}")
    # ids from the table's content, not random: the same report run twice gives the same HTML
    uuid = hashlib.sha1(df.to_csv().encode()).hexdigest()[:12]
    style = Styler(df, uuid=uuid, cell_ids=False).format(precision=digits, na_rep=EMPTY, escape="html")
    style = style.set_table_attributes('class="dataframe"')  # styled as pandas' own tables
    p_cols = [c for c in df.columns if is_p_value_column(c) and pd.api.types.is_numeric_dtype(df[c])]
    if p_cols:
        style = style.format(_p_formatter(digits), subset=p_cols)
    if isinstance(df.index, pd.RangeIndex):
        style = style.hide(axis="index")
    return style
