"""Command line: help for every command, clear errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "analysis", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", ["simulate", "validate", "quantify", "fit", "report"])
def test_help(command: str) -> None:
    res = run(command, "--help")
    assert res.returncode == 0
    assert "usage: python -m analysis " + command in res.stdout


def test_validate_good_sheet(small_study: Path) -> None:
    res = run("validate", str(small_study / "samples.csv"))
    assert res.returncode == 0, res.stderr
    assert "30 images of 10 animals" in res.stdout


def test_validate_bad_sheet_exits_2_with_message(small_study: Path, tmp_path: Path) -> None:
    lines = (small_study / "samples.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("animal_id")
    row = lines[1].split(",")
    row[col] = ""
    lines[1] = ",".join(row)
    bad = tmp_path / "samples.csv"
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(small_study / "images")
    res = run("validate", str(bad))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert str(bad) in res.stderr and "line 2" in res.stderr and "animal_id" in res.stderr
