"""Package marker: lets the suites here share tests/faults/harness.py."""
