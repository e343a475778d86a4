"""The package layout: each layer imports only the layers below it (DESIGN.md, "Layout").

Read from the source with :mod:`ast` (every import statement, also those inside functions),
so a new module that reaches upwards, or a model that imports the simulator, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "analysis"

#: What each layer may import (besides itself and the top-level helpers errors/progress/__init__).
ALLOWED = {
    "io": set(),
    "measure": {"io"},
    "pipeline": {"measure", "io"},
    "stats": {"io"},
    "report": {"stats", "pipeline", "measure", "io"},
    "sim": {"stats", "pipeline", "measure", "io"},
}
#: The one place the report reaches into the simulator: the true effects beside the estimates
#: on the index page, only for a study that ``simulate`` wrote (``study_truth.json``).
EXCEPTIONS = {("report/index.py", "analysis.sim.validation")}
TOP_LEVEL_HELPERS = {"analysis", "analysis.errors", "analysis.progress"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("analysis")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("analysis"):
            if node.module == "analysis":  # a submodule, or a name of the package itself (__version__)
                found |= {f"analysis.{a.name}" if (SRC / f"{a.name}.py").exists() or (SRC / a.name).is_dir()
                          else "analysis" for a in node.names}
            else:
                found.add(node.module)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_layers_below(layer: str) -> None:
    bad = []
    for path in sorted((SRC / layer).rglob("*.py")):
        rel = str(path.relative_to(SRC))
        for module in _imports(path):
            target = _layer(module)
            if module in TOP_LEVEL_HELPERS or target == layer:
                continue
            if target in ALLOWED[layer] or (rel, module) in EXCEPTIONS:
                continue
            # (a layer never imports the command line or the thin re-export modules of the top level)
            bad.append(f"{rel} imports {module}")
    assert not bad, "imports against the layering of DESIGN.md:\n" + "\n".join(bad)


def test_the_layers_exist_as_designed() -> None:
    assert {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()} == set(ALLOWED)


def test_the_contract_modules_are_thin_re_exports() -> None:
    """DESIGN.md names analysis.synapses / microglia / spines / quantify / simulate: they only re-export."""
    import analysis.microglia
    import analysis.quantify
    import analysis.simulate
    import analysis.spines
    import analysis.synapses
    from analysis.measure import microglia, puncta, spines
    from analysis.pipeline import quantify
    from analysis.sim import simulate

    assert analysis.synapses.detect_puncta is puncta.detect_puncta
    assert analysis.microglia.segment_microglia is microglia.segment_microglia
    assert analysis.microglia.measure_microglia is microglia.measure_microglia
    assert analysis.quantify.quantify_study is quantify.quantify_study
    assert analysis.simulate.simulate_study is simulate.simulate_study
    for name in ("detect_spines", "trace_dendrites", "track_spines"):
        assert getattr(analysis.spines, name) is getattr(spines, name)
    for name in ("synapses", "microglia", "quantify", "simulate", "spines"):
        source = (SRC / f"{name}.py").read_text()
        assert len(source.splitlines()) < 12 and "def " not in source
