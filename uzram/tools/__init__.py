"""Measuring and watching: the latency probe, the bench, the swap bench and its memory
eater, the mem_limit write storm, the test VM, Prometheus metrics and the exporter."""
