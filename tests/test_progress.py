"""Progress reporting: all items pass through; plain log lines when not interactive."""

from __future__ import annotations

import logging

import pytest

from analysis.progress import progress


def test_log_lines_outside_a_terminal(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with caplog.at_level(logging.INFO, logger="analysis.progress"):
        out = list(progress(iter(range(20)), total=20, desc="work"))
    assert out == list(range(20))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[-1] == "work: 20/20 images (100 %)"


def test_disabled_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="analysis.progress"):
        assert list(progress(range(5), total=5, desc="x", enabled=False)) == [0, 1, 2, 3, 4]
    assert not caplog.records
