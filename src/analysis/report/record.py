"""Numbers a notebook hands to tests and to the report index.

:func:`record` stores a named JSON value in the running notebook's outputs (invisible in the
HTML); :func:`recorded` reads every recorded value back from an executed notebook.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["RECORD_MIMETYPE", "record", "recorded"]

#: MIME type of the values a notebook records for tests and the index.
RECORD_MIMETYPE = "application/vnd.analysis.record+json"


def record(name: str, value: Any) -> None:
    """Record a named, JSON-serialisable value in the running notebook's outputs.

    The value is invisible in the rendered HTML; :func:`recorded` reads it back from the
    executed notebook, so tests assert on the numbers a notebook computed.

    Examples
    --------
    >>> record("n_animals", 112)  # doctest: +SKIP
    """
    from IPython.display import display

    json.dumps(value)  # fail early on values the notebook format cannot hold
    display({RECORD_MIMETYPE: {name: value}}, raw=True)


def recorded(notebook: str | os.PathLike[str]) -> dict[str, Any]:
    """All values recorded with :func:`record` in an executed notebook (later ones win)."""
    # (imported here: nbformat's schema validator loads jsonschema's format checkers, ~1.7 s,
    # which every notebook paid at its first cell through :func:`record`)
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    out: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if RECORD_MIMETYPE in data:
                out.update(data[RECORD_MIMETYPE])
    return out
