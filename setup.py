"""The gate's C parts, the one thing pyproject.toml cannot declare without an experimental table.

proxy/_native.c holds the index of exact meeting ids (one cache line per lookup where a dict takes
two or three) and the schedules of restrictions with a window. The extension is optional: without
a C compiler the package installs without it and the gate uses the Python equivalents in
proxy/native.py; `geogate check` says which are in use. Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("proxy._native", ["proxy/_native.c"], optional=True)])
