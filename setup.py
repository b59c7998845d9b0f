"""Map the user's top-level folders under one distribution namespace.

`router/` installs as `pyweave.router` and `cli/` as `pyweave.cli`; `pyweave` itself is an
implicit namespace package, so `pip install .` adds no generic top-level import names.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {}
for top in ("router", "cli"):
    for package in find_packages(include=[top, top + ".*"]):
        PACKAGE_DIRS["pyweave." + package] = package.replace(".", "/")

setup(packages=sorted(PACKAGE_DIRS), package_dir=PACKAGE_DIRS)
