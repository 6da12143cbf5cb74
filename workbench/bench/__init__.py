"""Benchmarks run by `workbench bench NAME`; one module per benchmark."""
