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
  session (a track that is lost once ends).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.io.vocabulary import GROUP_COLUMNS, VEHICLE, group_label

__all__ = ["spine_turnover", "spine_survival", "versus_vehicle"]

_POSITION = ["animal_id", "field"]


def _sessions(tracks: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in _POSITION if c in tracks]
    return tracks.drop_duplicates([*keys, "session"])[[*keys, "session", "day"]]


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
    t = tracks[tracks["session"] > 0]
    if "in_common_field" in t:
        t = t[t["in_common_field"].astype(bool)]
    keys = [c for c in _POSITION if c in t]
    counts = (t.groupby([*keys, "session", "status"]).size().unstack("status", fill_value=0)
              .reindex(columns=["stable", "gained", "lost"], fill_value=0).reset_index())
    sessions = _sessions(tracks)
    counts = counts.merge(sessions, on=[*keys, "session"])
    prev = sessions.assign(session=sessions["session"] + 1).rename(columns={"day": "from_day"})
    counts = counts.merge(prev, on=[*keys, "session"])
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
