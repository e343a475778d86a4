"""The report: running the notebooks, recorded numbers, the index page and figures."""
