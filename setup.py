"""Computes the package list for the folder -> package mapping in pyproject.toml.

setuptools' automatic discovery does not rename folders, so `core/cli` would be found as
`core.cli`; here every folder under core/, sdk/ and plugins/ becomes `btc_quant.<folder>...`.
Everything else (metadata, dependencies, entry points) lives in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {"core": "btc_quant.core", "sdk": "btc_quant.sdk", "plugins": "btc_quant.plugins", "testing": "btc_quant.testing"}

packages = ["btc_quant.sample"]
for folder, package in ROOTS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
