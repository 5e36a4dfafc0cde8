"""Benchmarks (run as modules from the checkout: python -m bench.vnc_relay); each prints JSON."""
