"""The longitudinal mixed model agrees with R's lme4 fitted to the same table.

Live counterpart of tests/test_stats_reference.py (stored R results, interior variances) on a
table whose animal x session variance is on its boundary (0).  Runs whenever ``Rscript`` with lme4 is available (``.ci/run`` installs Debian's r-base-core
and r-cran-lme4 so it runs in CI).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.stats.models import fit_synapse_lmm
from analysis.sim.measurements import simulate_measurements

RSCRIPT = shutil.which("Rscript")

R_CODE = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = TRUE)
d$session <- factor(paste(d$animal_id, d$day))
if ("X_position" %in% names(d)) d$pos <- factor(paste(d$animal_id, d$X_position))
m <- lmer(log_value ~ 0 + cell + (1 | animal_id) + (1 | session){extra}, data = d, REML = TRUE,
          control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
fe <- fixef(m)
write.csv(data.frame(term = sub("^cell", "", names(fe)), estimate = unname(fe), se = sqrt(diag(as.matrix(vcov(m))))),
          args[2], row.names = FALSE)
vc <- as.data.frame(VarCorr(m))
write.csv(vc[, c("grp", "vcov")], args[3], row.names = FALSE)
"""


def _lme4(tmp_path: Path, extra: str = "") -> tuple[pd.DataFrame, pd.Series]:
    """lme4's fixed effects (``term``, ``estimate``, ``se``) and variances (by group) of ``d.csv``
    in ``tmp_path``; ``extra``: more random-effect terms of the formula."""
    (tmp_path / "fit.R").write_text(R_CODE.replace("{extra}", extra))
    res = subprocess.run([RSCRIPT, str(tmp_path / "fit.R"), str(tmp_path / "d.csv"), str(tmp_path / "fe.csv"),
                          str(tmp_path / "vc.csv")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return (pd.read_csv(tmp_path / "fe.csv").set_index("term"),
            pd.read_csv(tmp_path / "vc.csv").set_index("grp")["vcov"])


def _has_lme4() -> bool:
    if RSCRIPT is None:
        return False
    res = subprocess.run([RSCRIPT, "-e", "library(lme4)"], capture_output=True)
    return res.returncode == 0


@pytest.mark.skipif(not _has_lme4(), reason="Rscript with lme4 not installed (apt-get install r-base-core r-cran-lme4)")
def test_fixed_effects_and_variances_match_lme4(tmp_path: Path) -> None:
    m = simulate_measurements("default", 5)
    fit = fit_synapse_lmm(m)
    assert fit.converged
    table = fit.result.model.data.frame[["log_value", "cell", "animal_id", "day"]]
    table.to_csv(tmp_path / "d.csv", index=False)
    r, vc_r = _lme4(tmp_path)
    fe_r = r["estimate"]
    ours = fit.coefficients.set_index("cell")["estimate"]
    assert set(fe_r.index) == set(ours.index)
    rel = np.abs(ours[fe_r.index] / fe_r - 1)
    assert rel.max() < 1e-4, rel.sort_values().tail()
    se_rel = np.abs(fit.coefficients.set_index("cell")["se"][r.index] / r["se"] - 1)
    assert se_rel.max() < 1e-3, se_rel.sort_values().tail()  # variances agree to ~5e-4 on the boundary
    vc = fit.variance_components.set_index("component")["variance"]
    assert vc["animal"] == pytest.approx(vc_r["animal_id"], rel=1e-3, abs=1e-6)
    assert vc["animal x session"] == pytest.approx(vc_r["session"], rel=1e-3, abs=1e-6)
    assert vc["residual (field)"] == pytest.approx(vc_r["Residual"], rel=1e-3, abs=1e-6)
    print("max rel fixed-effect difference", rel.max(), "variances", vc.to_dict(), vc_r.to_dict())



@pytest.mark.skipif(not _has_lme4(), reason="Rscript with lme4 not installed (apt-get install r-base-core r-cran-lme4)")
@pytest.mark.parametrize("seed", [3, 11])
def test_position_effect_matches_lme4(tmp_path: Path, seed: int) -> None:
    """The spine model's position-within-animal effect (the same dendrites every session) is
    lme4's ``(1 | animal) + (1 | animal:session) + (1 | animal:position)``."""
    from test_stats import _positions_table

    fit = fit_synapse_lmm(_positions_table(seed), "density", position="field")
    fit.result.model.data.frame[["log_value", "cell", "animal_id", "day", "_position"]].to_csv(
        tmp_path / "d.csv", index=False)
    r, vc_r = _lme4(tmp_path, " + (1 | pos)")
    ours = fit.coefficients.set_index("cell")
    np.testing.assert_allclose(ours.loc[r.index, "estimate"], r["estimate"], rtol=1e-4)
    np.testing.assert_allclose(ours.loc[r.index, "se"], r["se"], rtol=2e-3)
    vc = fit.variance_components.set_index("component")["variance"]
    for ours_name, r_name in (("animal", "animal_id"), ("animal x session", "session"),
                              ("position (same at every session)", "pos"), ("residual (field)", "Residual")):
        assert vc[ours_name] == pytest.approx(vc_r[r_name], rel=2e-3, abs=1e-5), ours_name
