"""Demo, soak and benchmark scripts (run as `python -m bench.<name>`)."""
