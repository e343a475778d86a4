"""Spine turnover from tracked two-photon sessions: gained and lost fractions, survival.

Input is the ``spine_tracks`` table of the quantification (one row per spine per session,
``status`` stable / gained / lost, :func:`analysis.measure.spines.track_spines`) with the
sheet columns of each position.  Counts are pooled over an animal's imaged positions and
the **animal is the unit**: each group is summarised by the mean of its animals' fractions
and compared with the vehicle group of the same genotype and dosing duration by Welch's t
(percentage points, 95 % CI).

* turnover per interval (previous session -> this one): ``lost`` = spines of the previous
  session missing from this one, ``gained`` = new spines, both over the spines of the previous
  session that could be followed (stable + lost), in the field both sessions share;
* survival: the fraction of the baseline (first session) spines still present at each later
  session (a track that is lost once ends);
* a sensitivity analysis of the turnover comparison adjusted for how the imaging changed
  between the interval's sessions (:func:`snr_adjusted_turnover`, from each image's measured
  SNR, :func:`interval_snr_change`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.io.vocabulary import GROUP_COLUMNS, VEHICLE, group_label

__all__ = ["spine_turnover", "spine_survival", "versus_vehicle", "interval_snr_change", "snr_adjusted_turnover"]

_POSITION = ["animal_id", "field"]


def _sessions(tracks: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in _POSITION if c in tracks]
    return tracks.drop_duplicates([*keys, "session"])[[*keys, "session", "day"]]


def _position_intervals(tracks: pd.DataFrame) -> pd.DataFrame:
    """Per imaged position and interval: counts of stable, gained and lost spines in the field
    both sessions share, with ``session``, ``from_day`` and ``day``."""
    t = tracks[tracks["session"] > 0]
    if "in_common_field" in t:
        t = t[t["in_common_field"].astype(bool)]
    keys = [c for c in _POSITION if c in t]
    counts = (t.groupby([*keys, "session", "status"]).size().unstack("status", fill_value=0)
              .reindex(columns=["stable", "gained", "lost"], fill_value=0).reset_index())
    sessions = _sessions(tracks)
    counts = counts.merge(sessions, on=[*keys, "session"])
    prev = sessions.assign(session=sessions["session"] + 1).rename(columns={"day": "from_day"})
    return counts.merge(prev, on=[*keys, "session"])


def spine_turnover(tracks: pd.DataFrame) -> pd.DataFrame:
    """Per animal and interval: spines followed, gained and lost, and their fractions.

    Parameters
    ----------
    tracks : DataFrame
        ``spine_tracks.parquet``: ``animal_id`` (and ``field``), group columns, ``session``,
        ``day``, ``status``, ``in_common_field``.

    Returns
    -------
    DataFrame
        One row per animal and interval: group columns, ``group``, ``from_day``, ``day``,
        ``n_followed`` (stable + lost), ``n_gained``, ``n_lost``, ``fraction_gained``,
        ``fraction_lost`` (of the followed spines), ``n_positions``.

    Examples
    --------
    >>> t = pd.DataFrame({"animal_id": "m1", "field": 1, "genotype": "WT", "compound": "vehicle",
    ...                   "dose_mg_kg": 0.0, "treatment_days": 7, "in_common_field": True,
    ...                   "session": [0, 0, 0, 0, 1, 1, 1, 1, 1], "day": [-3] * 4 + [7] * 5,
    ...                   "status": ["stable"] * 4 + ["stable", "stable", "stable", "lost", "gained"]})
    >>> spine_turnover(t)[["n_followed", "n_gained", "n_lost", "fraction_lost"]].to_numpy().tolist()
    [[4.0, 1.0, 1.0, 0.25]]
    """
    counts = _position_intervals(tracks)
    info = tracks.drop_duplicates("animal_id").set_index("animal_id")[GROUP_COLUMNS]
    per_animal = (counts.groupby(["animal_id", "from_day", "day"])
                  .agg(n_stable=("stable", "sum"), n_gained=("gained", "sum"), n_lost=("lost", "sum"),
                       n_positions=("session", "size")).reset_index())
    per_animal = per_animal.join(info, on="animal_id")
    per_animal["n_followed"] = per_animal["n_stable"] + per_animal["n_lost"]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_animal["fraction_gained"] = per_animal["n_gained"] / per_animal["n_followed"]
        per_animal["fraction_lost"] = per_animal["n_lost"] / per_animal["n_followed"]
    per_animal["group"] = [group_label(*k) for k in per_animal[GROUP_COLUMNS].itertuples(index=False)]
    cols = ["group", *GROUP_COLUMNS, "animal_id", "from_day", "day", "n_positions", "n_followed", "n_gained",
            "n_lost", "fraction_gained", "fraction_lost"]
    return per_animal[cols].astype({"n_followed": float, "n_gained": float, "n_lost": float}).sort_values(
        ["group", "animal_id", "day"]).reset_index(drop=True)


def spine_survival(tracks: pd.DataFrame) -> pd.DataFrame:
    """Per animal and later session: the fraction of its baseline spines still present.

    Returns
    -------
    DataFrame
        group columns, ``group``, ``animal_id``, ``day``, ``n_baseline``, ``n_surviving``,
        ``survival``.

    Examples
    --------
    >>> t = pd.DataFrame({"animal_id": "m1", "field": 1, "genotype": "WT", "compound": "vehicle",
    ...                   "dose_mg_kg": 0.0, "treatment_days": 7, "in_common_field": True,
    ...                   "session": [0, 0, 1, 1, 1], "day": [-3, -3, 7, 7, 7], "track_id": [0, 1, 0, 1, 2],
    ...                   "status": ["stable", "stable", "stable", "lost", "gained"]})
    >>> spine_survival(t)[["n_baseline", "n_surviving", "survival"]].to_numpy().tolist()
    [[2.0, 1.0, 0.5]]
    >>> t2 = pd.concat([t, t.iloc[[0]].assign(session=2, day=62, track_id=0)])  # the lost one stays lost
    >>> spine_survival(t2)[["day", "n_baseline", "n_surviving"]].to_numpy().tolist()
    [[7.0, 2.0, 1.0], [62.0, 2.0, 1.0]]
    """
    keys = [c for c in _POSITION if c in tracks]
    rows = []
    for pos, sub in tracks.groupby(keys, sort=False):
        base = set(sub.loc[sub["session"] == 0, "track_id"])
        dead: set = set()
        for (session, day), s in sub[sub["session"] > 0].groupby(["session", "day"]):
            alive = set(s.loc[s["status"] == "stable", "track_id"]) & base
            dead |= set(s.loc[s["status"] == "lost", "track_id"]) & base
            # a baseline spine lost at an earlier session stays lost; one that left the field
            # (no row, not lost) is not counted either way
            rows.append({"animal_id": sub["animal_id"].iloc[0], "day": day,
                         "n_baseline": float(len(alive | dead)), "n_surviving": float(len(alive))})
    out = pd.DataFrame(rows, columns=["animal_id", "day", "n_baseline", "n_surviving"])
    out = out.groupby(["animal_id", "day"], as_index=False)[["n_baseline", "n_surviving"]].sum()
    info = tracks.drop_duplicates("animal_id").set_index("animal_id")[GROUP_COLUMNS]
    out = out.join(info, on="animal_id")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["survival"] = out["n_surviving"] / out["n_baseline"]
    out["group"] = [group_label(*k) for k in out[GROUP_COLUMNS].itertuples(index=False)]
    return out[["group", *GROUP_COLUMNS, "animal_id", "day", "n_baseline", "n_surviving", "survival"]]


def versus_vehicle(per_animal: pd.DataFrame, value: str, by: list[str], *, alpha: float = 0.05) -> pd.DataFrame:
    """Group means of an animal-level fraction and each treated group minus its vehicle.

    Parameters
    ----------
    per_animal : DataFrame
        One row per animal (and ``by``), with group columns and ``value``.
    value : str
        The fraction to compare.
    by : list of str
        Further keys (e.g. ``["from_day", "day"]``): one comparison per level.

    Returns
    -------
    DataFrame
        ``group``, group columns, ``by``, ``n_animals``, ``mean``, ``sd``, and for treated groups
        ``n_animals_vehicle``, ``difference_pp`` (percentage points) with ``ci_low`` /
        ``ci_high`` and ``p_value`` (Welch's t over animals).
    """
    d = per_animal.dropna(subset=[value])
    rows = []
    for keys, sub in d.groupby(["group", *GROUP_COLUMNS, *by], sort=False):
        rec = dict(zip(["group", *GROUP_COLUMNS, *by], keys, strict=True))
        x = sub[value].to_numpy(float)
        rec.update({"n_animals": int(sub["animal_id"].nunique()), "mean": float(x.mean()),
                    "sd": float(x.std(ddof=1)) if len(x) > 1 else np.nan})
        if rec["compound"] != VEHICLE:
            veh = d[(d["genotype"] == rec["genotype"]) & (d["compound"] == VEHICLE)
                    & (d["treatment_days"] == rec["treatment_days"])]
            for k in by:
                veh = veh[veh[k] == rec[k]]
            y = veh[value].to_numpy(float)
            if len(x) > 1 and len(y) > 1:
                vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
                se = np.sqrt(vx + vy)
                df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if se > 0 else np.nan
                diff = x.mean() - y.mean()
                q = sps.t.ppf(1 - alpha / 2, df) if se > 0 else np.nan
                rec.update({"n_animals_vehicle": int(veh["animal_id"].nunique()), "difference_pp": 100 * diff,
                            "ci_low": 100 * (diff - q * se), "ci_high": 100 * (diff + q * se),
                            "p_value": float(2 * sps.t.sf(abs(diff / se), df)) if se > 0 else np.nan})
        rows.append(rec)
    return pd.DataFrame(rows)


def interval_snr_change(tracks: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per animal and interval: how the imaging changed between the interval's two sessions.

    A spine the detector misses in a noisier session is called ``lost`` in the interval that
    ends there and ``gained`` in the next one, so apparent turnover follows the change in
    image quality between sessions.  Each image's measured SNR
    (:func:`analysis.measure.spine_quality.spine_image_snr`) is taken on the log scale, and per
    imaged position and interval its change (``day`` minus ``from_day``) and mean are averaged
    over the animal's positions, weighted by the spines followed there (as the animal's
    fractions pool its positions' counts).

    Parameters
    ----------
    tracks : DataFrame
        As for :func:`spine_turnover`.
    images : DataFrame
        Image rows with ``animal_id`` (and ``field``), ``day`` and ``measured_snr``.

    Returns
    -------
    DataFrame
        ``animal_id``, ``from_day``, ``day``, ``change_log_snr``, ``mean_log_snr`` and
        ``n_positions_with_snr`` (positions with a measured SNR in both sessions); an animal
        without one has NaN.

    Examples
    --------
    >>> t = pd.DataFrame({"animal_id": "m1", "field": 1, "session": [0, 0, 1, 1], "day": [-3, -3, 7, 7],
    ...                   "status": ["stable", "stable", "stable", "lost"], "in_common_field": True})
    >>> img = pd.DataFrame({"animal_id": "m1", "field": 1, "day": [-3, 7], "measured_snr": [8.0, 4.0]})
    >>> c = interval_snr_change(t, img)
    >>> round(float(c["change_log_snr"].iloc[0]), 4), round(float(c["mean_log_snr"].iloc[0]), 4)
    (-0.6931, 1.7329)
    """
    if "image_id" in tracks and "image_id" in images:  # the tracked images only (not other readouts')
        images = images[images["image_id"].isin(tracks["image_id"].unique())]
    counts = _position_intervals(tracks)
    keys = [c for c in _POSITION if c in counts and c in images]
    snr = pd.to_numeric(images["measured_snr"], errors="coerce") if "measured_snr" in images else None
    out_cols = ["animal_id", "from_day", "day", "change_log_snr", "mean_log_snr", "n_positions_with_snr"]
    if snr is None or counts.empty:
        return pd.DataFrame(columns=out_cols)
    logs = images[keys].assign(day=pd.to_numeric(images["day"], errors="coerce").astype(float),
                               log_snr=np.log(snr.where(snr > 0)))  # no SNR, or not positive: NaN
    logs = logs.groupby([*keys, "day"], as_index=False)["log_snr"].mean()
    c = counts.assign(day=counts["day"].astype(float), from_day=counts["from_day"].astype(float))
    c = c.merge(logs, on=[*keys, "day"], how="left").merge(
        logs.rename(columns={"day": "from_day", "log_snr": "from_log_snr"}), on=[*keys, "from_day"], how="left")
    c["change"] = c["log_snr"] - c["from_log_snr"]
    c["level"] = (c["log_snr"] + c["from_log_snr"]) / 2
    c = c[np.isfinite(c["change"])]
    # weights: the spines followed at the position (its share of the animal's pooled fraction)
    w = (c["stable"] + c["lost"]).astype(float)
    c = c.assign(w=w.where(w > 0, 1e-9))
    g = c.assign(wc=c["w"] * c["change"], wl=c["w"] * c["level"]).groupby(["animal_id", "from_day", "day"])
    out = pd.DataFrame({"change_log_snr": g["wc"].sum() / g["w"].sum(), "mean_log_snr": g["wl"].sum() / g["w"].sum(),
                        "n_positions_with_snr": g.size()}).reset_index()
    return out[out_cols]


def snr_adjusted_turnover(tracks: pd.DataFrame, images: pd.DataFrame, *,
                          covariates: tuple[str, ...] = ("change_log_snr",), alpha: float = 0.05) -> pd.DataFrame:
    """Sensitivity analysis of the turnover comparison: treated minus vehicle adjusted for the
    change in measured SNR between the interval's sessions.

    Per interval and fraction (lost, gained), the fractions of a treated group's animals and of
    its vehicle's (same genotype and dosing duration; :func:`spine_turnover`) are regressed by
    ordinary least squares on their group (one mean each) and the centred ``covariates`` of
    :func:`interval_snr_change` (one common slope each); the difference is that of the two
    group means at the same covariates, with a t interval on the residual degrees of freedom
    (animals - 2 - covariates).  Each treated group is fitted with its own vehicle only: one
    fit over all groups of an interval (one residual variance for genotypes whose turnover
    varies differently) missed its nominal coverage in null studies (0.88-1.00,
    ``benchmarks/calibrate_spines_e2e.py``, RESULTS.md session 29).  The animal is the unit,
    as in :func:`versus_vehicle` (Welch's t), the report's primary comparison.

    Parameters
    ----------
    tracks, images : DataFrame
        The tracks and image rows, as for :func:`interval_snr_change`.
    covariates : tuple of str
        Columns of :func:`interval_snr_change`: ``change_log_snr`` (the default), and
        optionally ``mean_log_snr``.
    alpha : float
        1 - the confidence level.

    Returns
    -------
    DataFrame
        One row per treated group, interval and fraction: ``measure`` (``fraction_lost`` /
        ``fraction_gained``), ``group``, group columns, ``from_day``, ``day``, ``n_animals``,
        ``n_animals_vehicle``, ``difference_pp`` with ``ci_low`` / ``ci_high`` and ``p_value``,
        ``df``, ``snr_slope_pp`` / ``snr_slope_se_pp`` (points of the fraction per unit of
        the first covariate) and ``sd_change_log_snr`` (SD of the animals' change in log SNR
        in the fit: how much the imaging changed).  Empty without a measured SNR.
    """
    per = spine_turnover(tracks)
    day_types = per[["from_day", "day"]].dtypes.to_dict()
    change = interval_snr_change(tracks, images)
    cols = ["measure", "group", *GROUP_COLUMNS, "from_day", "day", "n_animals", "n_animals_vehicle", "difference_pp",
            "ci_low", "ci_high", "p_value", "df", "snr_slope_pp", "snr_slope_se_pp", "sd_change_log_snr"]
    if change.empty or per.empty:
        return pd.DataFrame(columns=cols)
    per = per.assign(from_day=per["from_day"].astype(float), day=per["day"].astype(float)).merge(
        change, on=["animal_id", "from_day", "day"], how="inner")
    rows = []
    for value in ("fraction_lost", "fraction_gained"):
        d = per.dropna(subset=[value, *covariates])
        for (from_day, day), sub in d.groupby(["from_day", "day"], sort=True):
            treated = sub[sub["compound"] != VEHICLE].drop_duplicates("group")
            for _, trt in treated.iterrows():
                veh_mask = ((sub["genotype"] == trt["genotype"]) & (sub["compound"] == VEHICLE)
                            & (sub["treatment_days"] == trt["treatment_days"]))
                if not veh_mask.any():
                    continue
                veh_group = sub.loc[veh_mask, "group"].iloc[0]
                fit_rows = sub[(sub["group"] == trt["group"]) | veh_mask]
                res = _group_ols(fit_rows, value, list(covariates), trt["group"], veh_group, alpha)
                if res is None:
                    continue
                rows.append({"measure": value, "group": trt["group"], **{k: trt[k] for k in GROUP_COLUMNS},
                             "from_day": from_day, "day": day,
                             "n_animals": int((sub["group"] == trt["group"]).sum()),
                             "n_animals_vehicle": int(veh_mask.sum()), **res})
    return pd.DataFrame(rows, columns=cols).astype(day_types)


def _group_ols(d: pd.DataFrame, value: str, covariates: list[str], group: str, vehicle: str,
               alpha: float) -> dict[str, float] | None:
    """OLS of ``value`` on one mean per group and centred ``covariates``; ``group`` minus
    ``vehicle`` (points) with its t interval, and the first covariate's slope.  None when the
    fit has no residual degrees of freedom or the design is singular."""
    labels = sorted(d["group"].unique())
    y = d[value].to_numpy(float)
    z = d[covariates].to_numpy(float)
    x = np.column_stack([(d["group"].to_numpy() == g).astype(float) for g in labels] + [z - z.mean(axis=0)])
    n, k = x.shape
    if n - k < 1 or np.linalg.matrix_rank(x) < k:
        return None
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ (x.T @ y)
    dof = n - k
    sigma2 = float(np.sum((y - x @ beta) ** 2) / dof)
    c = np.zeros(k)
    c[labels.index(group)], c[labels.index(vehicle)] = 1.0, -1.0
    diff, se = float(c @ beta), float(np.sqrt(sigma2 * c @ xtx_inv @ c))
    q = float(sps.t.ppf(1 - alpha / 2, dof))
    slope_i = len(labels)
    return {"difference_pp": 100 * diff, "ci_low": 100 * (diff - q * se), "ci_high": 100 * (diff + q * se),
            "p_value": float(2 * sps.t.sf(abs(diff / se), dof)) if se > 0 else np.nan, "df": float(dof),
            "snr_slope_pp": 100 * float(beta[slope_i]),
            "snr_slope_se_pp": 100 * float(np.sqrt(sigma2 * xtx_inv[slope_i, slope_i])),
            "sd_change_log_snr": float(np.std(d["change_log_snr"].to_numpy(float), ddof=1))
            if "change_log_snr" in d and n > 1 else np.nan}
