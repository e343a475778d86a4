"""What the models can fit: the design checks that ``validate``, ``fit`` and ``report`` share.

:func:`fit_problems` says why the models cannot be fitted to a study's images (a sample sheet
or the measurements table); :func:`design_notes` says what the models will do with a design
that they can fit (not problems).  Both look at each fitted readout separately: synapse
density, spine density and microglia counts.
"""

from __future__ import annotations

from analysis.errors import Problem

__all__ = ["FIT_VALUES", "design_notes", "fit_problems"]

#: Image-level values of the fitted readouts (a measurements table has at least one).
FIT_VALUES = {"synapse": "puncta_density_per_100um2", "spine": "spine_density_per_um", "microglia": "microglia_count"}


def _endpoint_rows(table) -> dict[str, object]:
    """The rows of each fitted readout: by its value (measurements) or its channel roles (a sheet)."""
    from analysis.stats.models import synapse_rows

    out = {}
    for kind, value in FIT_VALUES.items():
        if value in table:
            rows = synapse_rows(table, value) if kind == "synapse" else table[table[value].notna()]
        else:
            role = {"synapse": "synapse_channel", "spine": "dendrite_channel", "microglia": "microglia_channel"}[kind]
            if role not in table:
                continue
            rows = table[table[role].notna()]
            if kind == "synapse" and "microglia_channel" in rows and rows["microglia_channel"].isna().any():
                rows = rows[rows["microglia_channel"].isna()]
        if len(rows):
            out[kind] = rows
    return out


#: What a treated session must share with a vehicle session to be compared with it.
_MATCH = ("genotype", "treatment_days", "day")


def _after_first_dose(sub, vehicle: str):
    """Treated and vehicle rows of sessions after the first dose (day >= 0)."""
    after = sub[sub["day"] >= 0]
    return after[after["compound"] != vehicle], after[after["compound"] == vehicle]


def _keys(rows, columns) -> list[tuple]:
    return [tuple(r) for r in rows[list(columns)].drop_duplicates().itertuples(index=False)]


#: The columns that make a treatment group.
_GROUP = ("genotype", "compound", "dose_mg_kg", "treatment_days")


def _n_treated_groups(sub, vehicle: str) -> int:
    return len(_keys(sub[sub["compound"] != vehicle], _GROUP))


def _uncompared(sub, vehicle: str, baselines: bool = True) -> dict[tuple, str]:
    """Treated groups of ``sub`` that the models cannot compare with vehicle, and why (the rule
    of :func:`analysis.stats.models.synapse_contrasts`: vehicle animals of the same genotype and
    treatment_days imaged on the same day after the first dose, and, for the longitudinal
    readouts (``baselines``), with a baseline session when the treated group has one and without
    when it has none; microglia are compared at each day)."""
    out = {}
    vehicles = sub[sub["compound"] == vehicle]
    for key, g in sub[sub["compound"] != vehicle].groupby(list(_GROUP)):
        genotype, compound, dose, days = key
        v = vehicles[(vehicles["genotype"] == genotype) & (vehicles["treatment_days"] == days)]
        shared = set(g.loc[g["day"] >= 0, "day"]) & set(v.loc[v["day"] >= 0, "day"])
        name = f"{genotype} {compound} {dose:g} mg/kg x {days:g} d"
        if not shared:
            out[key] = f"{name} has no vehicle animals of its genotype and treatment_days imaged on the same day"
        elif baselines and (g["day"] < 0).any() != (v["day"] < 0).any():
            which = "it has a baseline session and its vehicle animals none" if (g["day"] < 0).any() else (
                "its vehicle animals have a baseline session and it has none")
            out[key] = f"{name}: {which}"
    return out


def _show(rows) -> str:
    """Genotype, treatment days and days of ``rows``, e.g. ``WT 7 d on day 7, 56``."""
    parts = []
    for (g, t), d in rows.groupby(["genotype", "treatment_days"])["day"]:
        parts.append(f"{g} {t:g} d on day {', '.join(f'{x:g}' for x in sorted(d.unique()))}")
    return "; ".join(parts)


def fit_problems(table, file: str) -> list[Problem]:
    """Why the models cannot be fitted to the images of ``table`` (a sheet or measurements).

    Each readout the table has (synapse density, spine density, microglia counts) is
    compared between groups with animals as the unit: it needs a session after the first
    dose, a treated group, and a group of two or more animals.  A baseline session (day < 0)
    is not needed: without one the groups are compared at each day (cross-sectional).
    """
    from analysis.io import REFERENCE_COMPOUND

    rows = _endpoint_rows(table)
    if not rows:
        return [Problem(file, "no image has a synapse density, a spine density or a microglia count, so there is "
                              "nothing to fit; check failures.csv beside it for the images that could not be measured",
                        column=FIT_VALUES["synapse"])]
    problems = []
    for kind, sub in rows.items():
        if not (sub["day"] >= 0).any():
            problems.append(Problem(file, f"only baseline {kind} images (day < 0): there is no session after the first "
                                          "dose to compare; add the later sessions", column="day"))
        compounds = set(sub["compound"].dropna())
        if compounds and compounds <= {REFERENCE_COMPOUND}:
            problems.append(Problem(file, f"only vehicle {kind} images: there is no treated group to compare with "
                                          "vehicle; add the treated animals", column="compound"))
        treated, vehicle = _after_first_dose(sub, REFERENCE_COMPOUND)
        reasons = _uncompared(sub, REFERENCE_COMPOUND, baselines=kind != "microglia")
        if len(treated) and len(reasons) == _n_treated_groups(sub, REFERENCE_COMPOUND):
            if not set(_keys(treated, _MATCH)) & set(_keys(vehicle, _MATCH)):
                problems.append(Problem(
                    file, f"no treated {kind} group has vehicle animals of the same genotype and treatment_days imaged on "
                          f"the same day (treated: {_show(treated)}; vehicle: {_show(vehicle) or 'none after the first dose'}): "
                          "each treated group is compared with the vehicle animals of its genotype and dosing duration at "
                          "each session; give the vehicle controls the treatment_days of the group they control and image "
                          "them at the same sessions", column="treatment_days"))
            else:
                problems.append(Problem(
                    file, f"no treated {kind} group can be compared with vehicle: {'; '.join(sorted(set(reasons.values())))}; "
                          "a change from baseline is compared with the vehicle animals' change from their baseline, a "
                          "single session with the vehicle animals' same session: give both groups a baseline session "
                          "(day < 0) or neither", column="day"))
        animals = sub.groupby(list(_GROUP))["animal_id"].nunique()
        if len(animals) and animals.max() < 2:
            problems.append(Problem(file, f"every group has a single animal ({kind} images): the model needs two or "
                                          "more animals in a group to separate animal from treatment; add animals",
                                    column="animal_id"))
    return problems


def design_notes(table) -> list[str]:
    """What the models will do with the design of ``table`` (not problems)."""
    from analysis.io import REFERENCE_COMPOUND

    notes = []
    for kind, sub in _endpoint_rows(table).items():
        if kind != "microglia" and not (sub["day"] < 0).any():
            day0 = (" (sessions on day 0 count as after the first dose: a baseline imaged before it is a negative "
                    "day, e.g. -1)") if (sub["day"] == 0).any() else ""
            notes.append(f"no baseline {kind} session (day < 0): groups are compared with vehicle at each day "
                         f"(cross-sectional); add baseline sessions to measure change within animals{day0}")
        reasons = _uncompared(sub, REFERENCE_COMPOUND, baselines=kind != "microglia")
        if len(reasons) < _n_treated_groups(sub, REFERENCE_COMPOUND):
            for why in reasons.values():  # (when none can be compared, fit_problems says so)
                notes.append(f"{kind}: {why}: it gets no contrast with vehicle")
    return notes
