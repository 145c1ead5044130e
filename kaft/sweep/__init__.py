"""Sweep operations: naming a job's run directory, a sweep's live status and its end-of-sweep summary."""
