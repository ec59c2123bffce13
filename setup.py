# Metadata lives in setup.cfg; this shim lets Debian's pybuild and older pips build it.
from setuptools import setup

setup()
