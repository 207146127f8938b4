"""verify: evaluate base and candidate on a task profile and gate on retention."""
