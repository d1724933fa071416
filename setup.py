"""Package layout that pyproject.toml cannot say on its own: the firmware sources ship in the wheel.

``firmware/`` stays at the top of the repository (one copy in git); this maps it onto the package
``tinyfed._firmware`` so ``pip install`` puts the C sources, board layers, linker scripts and the
Makefile beside the code that builds them (``tinyfed firmware build`` from an installed package).
Everything else (metadata, dependencies, package data) is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["tinyfed", "tinyfed.*"]), "tinyfed._firmware"],
    package_dir={"tinyfed._firmware": "firmware"},
)
