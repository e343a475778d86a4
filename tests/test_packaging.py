"""The two dependency lists (pyproject.toml and environment.yml) name the same packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _split(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", spec)
    assert m, spec
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    return name, m.group(3).replace(" ", "")


def _pyproject() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        specs += extra
    return dict(_split(s) for s in specs)


def _environment() -> dict[str, str]:
    deps = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s*-\s+([^#\s].*?)\s*(#.*)?$", line)
        if m and not line.strip().startswith("- conda-forge"):
            name, spec = _split(m.group(1))
            deps[name] = spec
    return {k: v for k, v in deps.items() if k not in {"python", "pip", "conda-forge"}}


def test_same_packages_and_versions() -> None:
    py, env = _pyproject(), _environment()
    assert set(py) == set(env), f"only in pyproject: {set(py) - set(env)}; only in environment.yml: {set(env) - set(py)}"
    assert py == env


def test_lists_are_not_empty() -> None:
    assert "numpy" in _pyproject() and "numpy" in _environment()
    assert len(_pyproject()) >= 10
