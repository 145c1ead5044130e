"""Analysis of kaft runs: collect results.json files into tables (``python -m analysis.results DIR``)."""
