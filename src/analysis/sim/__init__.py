"""Simulated studies with ground truth: truth model, design, phantoms, spines (used by simulate, validation, benchmarks and tests; never by stats)."""
