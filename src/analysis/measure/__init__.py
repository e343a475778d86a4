"""Image -> numbers: one module per measurement (noise, puncta, microglia, engulfment, spines) and one point matcher."""
