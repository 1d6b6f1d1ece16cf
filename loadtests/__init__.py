"""Load generators and benchmarks for geogate (run as ``python -m loadtests.<name>``)."""
