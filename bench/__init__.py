"""Benchmarks: threadflow against its peers on the same machine. Run ``python -m bench [--quick] [--only NAME]``."""
