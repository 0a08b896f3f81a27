"""Evaluation suites, one module each; declared in suites/entries.py."""
