"""The study's vocabulary: the columns that define a group and the reference values.

A group is one combination of :data:`GROUP_COLUMNS`; :func:`group_label` names it.  The
reference compound (:data:`VEHICLE`) and genotype (:data:`WILD_TYPE`) are what treated
groups are compared with; the sample sheet's spellings are normalised to these
(:func:`analysis.io.sheet.normalise_vocabulary`).
"""

from __future__ import annotations

__all__ = ["GROUP_COLUMNS", "VEHICLE", "WILD_TYPE", "TSPO_KO", "group_label"]

#: Sheet columns whose combination is one treatment group.
GROUP_COLUMNS = ["genotype", "compound", "dose_mg_kg", "treatment_days"]
#: Reference compound: every treated group is compared with the vehicle group of its genotype and duration.
VEHICLE = "vehicle"
#: Reference genotype.
WILD_TYPE = "WT"
#: Genotype label of the global TSPO knockout.
TSPO_KO = "TSPO_KO"


def group_label(genotype: str, compound: str, dose_mg_kg: float, treatment_days: int) -> str:
    """Human-readable group name.

    Examples
    --------
    >>> group_label("WT", "diazepam", 5.0, 7)
    'WT diazepam 5 mg/kg x 7 d'
    >>> group_label("WT", "vehicle", 0.0, 7)
    'WT vehicle x 7 d'
    """
    if compound == VEHICLE:
        return f"{genotype} vehicle x {int(treatment_days)} d"
    return f"{genotype} {compound} {dose_mg_kg:g} mg/kg x {int(treatment_days)} d"
