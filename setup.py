"""The compiled part of the loader; everything else is declared in pyproject.toml.

``loader._fastcsv`` checks, hashes and writes plain CSV records in C. It is optional:
where it cannot be built (no C compiler), the loader installs all the same and takes
every record through Python, with the same results, only more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("loader._fastcsv", ["loader/_fastcsv.c"], optional=True)])
