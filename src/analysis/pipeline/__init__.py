"""Per-image quantification of a study: the readout registry, the parallel runner and its cache."""
