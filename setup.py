"""Computes the package list for the folder -> package mapping in pyproject.toml, and compiles the
backtest kernels at the end of an editable install.

setuptools' automatic discovery does not rename folders, so `core/cli` would be found as
`core.cli`; here every folder under core/, sdk/ and plugins/ becomes `btc_quant.<folder>...`.
Everything else (metadata, dependencies, entry points) lives in pyproject.toml.

`pip install -e .` builds its editable wheel with :class:`EditableWheelCompiling`: after the wheel,
it runs ``btc_quant.core.precompile`` from these sources in the build environment (numba and the
libraries the backtest imports are build requirements in pyproject.toml), which fills numba's cache
(``~/.cache/btc-quant/numba/src-<digest>`` or under ``$NUMBA_CACHE_DIR``) with the main command's
kernels, so the first `quant run strategy=maker_vol broker=sim` does not spend ~19 s compiling.
The same step loads the plugins once and writes the plugin listing `quant --help` and `quant
plugins` read (``core/cli/plugin_cache.py``), so their first call does not import every plugin
(the libraries the plugins import are build requirements too). A failure there is a warning,
never a failed install. `BTC_QUANT_PRECOMPILE=0` skips both.
"""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.editable_wheel import editable_wheel

ROOTS = {"core": "btc_quant.core", "sdk": "btc_quant.sdk", "plugins": "btc_quant.plugins", "testing": "btc_quant.testing"}
HERE = Path(__file__).resolve().parent

packages = ["btc_quant.sample"]
for folder, package in ROOTS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

# Imports btc_quant from the source folders as the editable install maps them (same file paths, so
# numba's cache entries match the installed package's), then compiles.
_BOOTSTRAP = """
import importlib.abc, importlib.machinery, importlib.util, sys
folders, modules = {folders!r}, {modules!r}
class SourceFolders(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "btc_quant":
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = []
            return spec
        if name in folders:
            return importlib.util.spec_from_file_location(name, folders[name] + "/__init__.py", submodule_search_locations=[folders[name]])
        return None
sys.meta_path.insert(0, SourceFolders())
from btc_quant.core.precompile import main
compiled = main(modules)
try:
    from btc_quant.core.cli.plugin_cache import remember_install
    remember_install(modules, {distribution!r}, {version!r})
except Exception as exc:  # the first quant --help then loads every plugin, as without this step
    print(f"btc-quant: the plugin listing was not cached at install ({{type(exc).__name__}}: {{exc}})", file=sys.stderr)
sys.exit(compiled)
"""


def precompile_kernels() -> None:
    if os.environ.get("BTC_QUANT_PRECOMPILE", "1") == "0":
        return
    pyproject = tomllib.loads((HERE / "pyproject.toml").read_text())
    package_dir = pyproject["tool"]["setuptools"]["package-dir"]
    folders = {package: str(HERE / folder) for package, folder in package_dir.items()}
    modules = dict(pyproject["project"]["entry-points"]["btc_quant"])
    project = pyproject["project"]
    code = _BOOTSTRAP.format(folders=folders, modules=modules, distribution=project["name"], version=project["version"])
    print("btc-quant: compiling the backtest kernels for this machine (about 20 s of CPU, once)...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-c", code], cwd=HERE)
    if done.returncode != 0:
        print("btc-quant: warning: the kernels were not compiled ahead; the first run compiles them", file=sys.stderr)


class EditableWheelCompiling(editable_wheel):
    """The editable wheel, then the kernels compiled into numba's cache (see the module docstring)."""

    def run(self):
        super().run()
        precompile_kernels()


if __name__ == "__main__":  # as setuptools' build backend runs it (tests import the functions above)
    setup(packages=packages, cmdclass={"editable_wheel": EditableWheelCompiling})
