"""Sweep operations: naming a job's run directory, planning a sweep before it is submitted, its live status and its
end-of-sweep summary. They read jobs through :mod:`kaft.results`, the one results contract."""
