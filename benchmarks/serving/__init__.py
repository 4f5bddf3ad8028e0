"""Serving benchmarks: POD against vLLM's own attention backends (`python -m benchmarks.serving`)."""
