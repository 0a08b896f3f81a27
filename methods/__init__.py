"""Decoding methods, one module each; declared in methods/entries.py."""
