"""Write the fixed input tables of the R reference (tests/reference/*_input.csv).

Deterministic: the ``default`` preset with seed 5 of :func:`analysis.sim.measurements.simulate_measurements`
and :func:`analysis.sim.measurements.simulate_terminal_measurements` (8 animals per group, 14 groups,
2 fields per session).  The simulator draws no animal x session variation, so every fit of its
tables puts that variance on its boundary (0); to make the reference exercise the usual interior
case, each animal x session gets a log-normal factor (SD 0.05 on the log scale, seeded) on top.
The inputs are committed, so the reference tables and the tests do not
depend on the simulator staying the same; rerun this script, then ``Rscript make_reference.R``,
only to rebuild the whole reference on purpose::

    .venv/bin/python tests/reference/make_inputs.py
    cd tests/reference && Rscript make_reference.R
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.sim.measurements import simulate_measurements, simulate_terminal_measurements

HERE = Path(__file__).resolve().parent
SHEET = ["animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day"]


def main() -> None:
    syn = simulate_measurements("default", 5)
    rng = np.random.default_rng(20261130)
    sessions = syn.groupby(["animal_id", "day"]).ngroup().to_numpy()
    syn["puncta_density_per_100um2"] *= np.exp(rng.normal(0.0, 0.05, sessions.max() + 1))[sessions]
    # densities are Poisson counts per 600 um^2 field: 12 significant digits keep them exact enough
    syn[["image_id", *SHEET, "puncta_density_per_100um2"]].to_csv(
        HERE / "synapse_input.csv", index=False, float_format="%.12g")
    img, cells = simulate_terminal_measurements("default", 5)
    img[["image_id", *SHEET, "field_area_mm2", "microglia_count"]].to_csv(
        HERE / "terminal_images_input.csv", index=False, float_format="%.12g")
    cells.to_csv(HERE / "terminal_cells_input.csv", index=False, float_format="%.8g")


if __name__ == "__main__":
    main()
