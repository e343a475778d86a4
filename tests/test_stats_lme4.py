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
m <- lmer(log_value ~ 0 + cell + (1 | animal_id) + (1 | session), data = d, REML = TRUE,
          control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
fe <- fixef(m)
write.csv(data.frame(term = sub("^cell", "", names(fe)), estimate = unname(fe), se = sqrt(diag(as.matrix(vcov(m))))),
          args[2], row.names = FALSE)
vc <- as.data.frame(VarCorr(m))
write.csv(vc[, c("grp", "vcov")], args[3], row.names = FALSE)
"""


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
    (tmp_path / "fit.R").write_text(R_CODE)
    res = subprocess.run([RSCRIPT, str(tmp_path / "fit.R"), str(tmp_path / "d.csv"), str(tmp_path / "fe.csv"),
                          str(tmp_path / "vc.csv")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    r = pd.read_csv(tmp_path / "fe.csv").set_index("term")
    fe_r = r["estimate"]
    ours = fit.coefficients.set_index("cell")["estimate"]
    assert set(fe_r.index) == set(ours.index)
    rel = np.abs(ours[fe_r.index] / fe_r - 1)
    assert rel.max() < 1e-4, rel.sort_values().tail()
    se_rel = np.abs(fit.coefficients.set_index("cell")["se"][r.index] / r["se"] - 1)
    assert se_rel.max() < 1e-3, se_rel.sort_values().tail()  # variances agree to ~5e-4 on the boundary
    vc_r = pd.read_csv(tmp_path / "vc.csv").set_index("grp")["vcov"]
    vc = fit.variance_components.set_index("component")["variance"]
    assert vc["animal"] == pytest.approx(vc_r["animal_id"], rel=1e-3, abs=1e-6)
    assert vc["animal x session"] == pytest.approx(vc_r["session"], rel=1e-3, abs=1e-6)
    assert vc["residual (field)"] == pytest.approx(vc_r["Residual"], rel=1e-3, abs=1e-6)
    print("max rel fixed-effect difference", rel.max(), "variances", vc.to_dict(), vc_r.to_dict())
