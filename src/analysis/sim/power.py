"""Power of the planned synapse contrasts for a design, by simulation with the measured error model.

A lab planning a study asks: with this many animals per group, fields per session and this
mix of image quality, how likely is the primary contrast to be detected, and what design
reaches 80 %?  :func:`simulate_power` answers by simulation: studies of the design are drawn
from the calibrated truth model (:func:`analysis.sim.measurements.simulate_measurements`: animals,
fields, Poisson counts), each field's measured density and measured SNR are drawn from the
detector's error model (:func:`error_model`, estimated on thousands of fields rendered and
quantified by the pipeline, ``benchmarks/calibrate_e2e.py error-model``), and the report's
model is fitted (measured SNR as covariate, the primary contrast first, then Holm).

The density simulated is the one the report's model fits: by default (``fp-corrected``) the
measured density minus the false detections expected at the image's SNR
(:func:`analysis.stats.models.false_detection_corrected`, applied by ``fit_study``); the error
model has a second set of rows for the density as quantified (``measured``, the model of
``fit --no-quality-adjustment`` without the SNR covariate, and of the report until 2026-11-30).

The error model per SNR level: ``log(measured / true) = a + b log(true / 40) + c (s - m) + e``
with ``s = log(measured SNR) ~ N(m, sd_snr)`` and ``e ~ N(0, sd)``: the level's bias, its
dependence on density (differential error: with b < 0 fewer puncta are missed where there are
fewer), the part of the error the measured SNR predicts, and the rest.

This module simulates, so it belongs with the simulator: the statistics (:mod:`analysis.stats`)
never import it.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ProcessPoolExecutor
from importlib import resources

import numpy as np
import pandas as pd

from analysis.sim.design import PRESETS, Preset

__all__ = ["error_model", "simulate_power", "design_preset", "power_table", "DENSITIES"]

log = logging.getLogger(__name__)

#: Reference density of the error model's slope (puncta per 100 um^2).
REFERENCE_DENSITY = 40.0
#: The error model shipped with the package (written by ``calibrate_e2e.py error-model``).
ERROR_MODEL_FILE = "measurement_error.csv"
_COLUMNS = ("density", "snr_level", "a", "b", "c", "sd", "snr_log_mean", "snr_log_sd", "fields")
#: Densities the error model describes (see the module notes); the first is the report's.
DENSITIES = ("fp-corrected", "measured")


def error_model(density: str = DENSITIES[0]) -> pd.DataFrame:
    """The detector's per-SNR-level error model of one density (see the module notes), one row per level.

    Parameters
    ----------
    density : {"fp-corrected", "measured"}
        The density the model describes: the report's (measured minus the false detections
        expected at the image's SNR) or the density as quantified.
    """
    if density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; one of {DENSITIES}")
    with resources.files("analysis").joinpath("data", ERROR_MODEL_FILE).open() as fh:
        table = pd.read_csv(fh)
    missing = [c for c in _COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{ERROR_MODEL_FILE} lacks column(s) {missing}; regenerate it with calibrate_e2e.py error-model")
    return table[table["density"] == density].drop(columns="density").set_index("snr_level")


def design_preset(base: str = "default", *, animals_per_group: int | None = None, synapse_fields: int | None = None,
                  snr_mix: dict[str, float] | None = None) -> str:
    """Register a variant of a design preset and return its name (for :func:`simulate_power`)."""
    p: Preset = PRESETS[base]
    changes = {k: v for k, v in {"animals_per_group": animals_per_group, "synapse_fields": synapse_fields,
                                 "snr_mix": snr_mix}.items() if v is not None}
    if not changes:
        return base
    if "snr_mix" in changes:
        unknown = set(changes["snr_mix"]) - set(error_model().index)
        if unknown:
            raise ValueError(f"unknown SNR level(s) {sorted(unknown)}; the error model has {list(error_model().index)}")
    tag = ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
    name = f"{base}[{tag}]"
    PRESETS[name] = dataclasses.replace(p, name=name, **changes)
    return name


def measured_table(preset: str, seed: int, model: pd.DataFrame | None = None) -> pd.DataFrame:
    """One simulated study's synapse table with measured densities and measured SNR.

    ``puncta_density_per_100um2`` is the density ``model`` describes (default: the report's,
    :func:`error_model`), ``true_field_density`` the simulated truth of the field.
    """
    from analysis.sim.measurements import simulate_measurements

    model = error_model() if model is None else model
    m = simulate_measurements(preset, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    par = model.loc[m["snr_level"].to_numpy()]
    true = m["puncta_density_per_100um2"].to_numpy()
    s = rng.normal(par["snr_log_mean"].to_numpy(), par["snr_log_sd"].to_numpy())
    x = np.log(np.maximum(true, 1e-9) / REFERENCE_DENSITY)
    log_ratio = (par["a"].to_numpy() + par["b"].to_numpy() * x + par["c"].to_numpy() * (s - par["snr_log_mean"].to_numpy())
                 + rng.normal(0.0, par["sd"].to_numpy()))
    out = m.assign(true_field_density=true, puncta_density_per_100um2=true * np.exp(log_ratio), measured_snr=np.exp(s))
    out["microglia_channel"] = pd.NA
    return out


def _one(task: tuple[str, int, str | None, float, str]) -> pd.DataFrame:
    from analysis.stats import fit_synapse_lmm, quality_covariates, session_contrasts
    from analysis.sim.validation import true_pct_vs_vehicle

    preset, seed, primary, alpha, density = task
    # (the simulated density is already the corrected one: the SNR covariate follows, as in fit_study)
    table, names = quality_covariates(measured_table(preset, seed, error_model(density)))
    c = session_contrasts(fit_synapse_lmm(table, covariates=names), primary=primary, alpha=alpha)
    c = c[c["planned"]].copy()
    c["true_pct"] = true_pct_vs_vehicle(c, null=PRESETS[preset].null)
    c["seed"] = seed
    return c[["group", "true_pct", "pct_vs_vehicle", "pct_vs_vehicle_ci_low", "pct_vs_vehicle_ci_high",
              "p_vs_vehicle", "p_vs_vehicle_adjusted", "primary", "n_animals", "seed"]]


def simulate_power(preset: str = "default", studies: int = 100, *, primary: str | None = "WT diazepam 5 mg/kg x 7 d",
                   alpha: float = 0.05, seed: int = 80_000, workers: int = 1,
                   density: str = DENSITIES[0]) -> pd.DataFrame:
    """Per-study planned contrasts of ``studies`` simulated studies of a design (see module notes).

    Parameters
    ----------
    preset : str
        Design preset (:func:`design_preset` makes variants).
    studies : int
        Simulated studies.
    primary : str or None
        Primary contrast, tested first (None: Holm over all planned contrasts).
    alpha : float
        Significance level.
    seed : int
        Seed of the first study (study ``i`` uses ``seed + i``).
    workers : int
        Worker processes.
    density : {"fp-corrected", "measured"}
        The density fitted (:func:`error_model`); the SNR covariate is used with either.

    Returns
    -------
    DataFrame
        One row per study and planned contrast; summarise with :func:`power_table`.
    """
    error_model(density)  # (an unknown density fails here, not in a worker)
    jobs = [(preset, seed + i, primary, alpha, density) for i in range(studies)]
    if workers <= 1:
        frames = [_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            frames = list(pool.map(_one, jobs, chunksize=max(1, studies // (4 * workers))))
    return pd.concat(frames, ignore_index=True)


def power_table(rows: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Power (unadjusted and at the report's adjustment), CI width and coverage per contrast.

    ``mde_pct`` is the smallest true change the design detects with 80 % power at the
    unadjusted level, from the mean standard error: ``(z_{1-alpha/2} + z_{0.8}) x SE``, in
    percent.
    """
    from scipy import stats as sps

    r = rows.assign(reject=rows["p_vs_vehicle"] < alpha, reject_adjusted=rows["p_vs_vehicle_adjusted"] < alpha,
                    width=rows["pct_vs_vehicle_ci_high"] - rows["pct_vs_vehicle_ci_low"],
                    covered=(rows["pct_vs_vehicle_ci_low"] <= rows["true_pct"])
                    & (rows["true_pct"] <= rows["pct_vs_vehicle_ci_high"]))
    se_log = (np.log1p(r["pct_vs_vehicle_ci_high"] / 100) - np.log1p(r["pct_vs_vehicle_ci_low"] / 100)) / (2 * 1.96)
    r["se_log"] = se_log
    out = r.groupby("group", sort=False).agg(
        studies=("seed", "size"), primary=("primary", "any"), n_animals=("n_animals", "median"),
        true_pct=("true_pct", "mean"), power=("reject", "mean"), power_adjusted=("reject_adjusted", "mean"),
        mean_estimate_pct=("pct_vs_vehicle", "mean"), ci_width_pct=("width", "mean"), coverage=("covered", "mean"),
        se_log=("se_log", "mean")).reset_index()
    k = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(0.8)
    out["mde_pct"] = 100 * np.expm1(-k * out["se_log"])
    return out.drop(columns="se_log").sort_values(["primary", "group"], ascending=[False, True], ignore_index=True)
