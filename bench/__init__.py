"""Benchmarks against peers (bench/run.py); a package so that workers run as `-m bench.worker`."""
