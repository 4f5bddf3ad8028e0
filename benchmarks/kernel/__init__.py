"""Kernel benchmarks and diagnosis tools: POD against FA3 on hybrid batches."""
