"""vispec-bench: honest benchmarks of speculative decoding for vision-language models."""

__version__ = "0.1.0"
