"""Serving benchmarks on vLLM's own sweep: configs, a local model directory, ratio tables, the soak."""
