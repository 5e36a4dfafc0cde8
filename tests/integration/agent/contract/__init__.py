"""The driver contract suite's harnesses: one per driver (see harness.py)."""
