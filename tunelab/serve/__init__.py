"""Using finished runs: evaluate, merge, and serve several adapters on one base."""
