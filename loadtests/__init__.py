"""Load generators and benchmarks for geogate.

``python -m loadtests`` (``geogate-loadtest``) is the join-storm tester: scenario files
(:mod:`loadtests.scenario`) become plans (:mod:`loadtests.plan`) played by worker processes
(:mod:`loadtests.worker`, :mod:`loadtests.client`) against a proxy it starts or finds
(:mod:`loadtests.target`); every outcome is checked against the restrictions in force
(:mod:`loadtests.checker`) and reported with HDR percentiles (:mod:`loadtests.report`). The other
modules are benchmarks run as ``python -m loadtests.<name>``.
"""
