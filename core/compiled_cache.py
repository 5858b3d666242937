"""Where numba caches btc-quant's compiled functions: a directory named by a digest of their sources.

numba checks a cached function against its own source file only (its timestamp and size). A kernel
that calls a compiled function from another file -- the pair loop calling the venue core, a strategy
kernel calling the SDK -- keeps running the old callee from its cache after only the callee's file
changed, so an upgrade or a ``git pull`` could silently give the backtest old rules. Naming the
cache directory by a digest of every btc-quant source file that holds compiled code makes any such
change start from an empty cache (one compile, announced by the CLI), never a stale one.

:func:`use_source_keyed_cache` runs when :mod:`btc_quant.core` is imported, before any compiled
function is defined (every btc-quant module imports the core first). It does not import numba.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

#: how many source digests' caches to keep side by side (several checkouts may share the user cache)
KEEP = 4
#: a digest directory used (imported from) within this many seconds is never pruned: another
#: checkout or version may be running from it right now, and numba reads its files lazily
IN_USE_S = 2 * 24 * 3600
_PACKAGES = ("core", "sdk", "plugins")


def source_digest(roots: list[Path]) -> str:
    """A digest of the path and contents of every ``.py`` file under ``roots`` that uses numba
    (names ``numba``, or ``njit``: btc-quant's own :func:`btc_quant.core.compiled.njit`)."""
    digest = hashlib.blake2b(digest_size=8)
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            data = path.read_bytes()
            if b"numba" in data or b"njit" in data:
                digest.update(str(path.relative_to(root.parent)).encode())
                digest.update(data)
    return digest.hexdigest()


def _package_roots() -> list[Path]:
    here = Path(__file__).resolve().parent  # btc_quant.core's folder
    roots = [here]
    for name in _PACKAGES[1:]:
        module = sys.modules.get(f"btc_quant.{name}")
        spec_paths = list(getattr(module, "__path__", [])) if module else []
        if not spec_paths:
            import importlib.util

            spec = importlib.util.find_spec(f"btc_quant.{name}")
            spec_paths = list(spec.submodule_search_locations or []) if spec else []
        roots += [Path(p) for p in spec_paths]
    return roots


def _prune(parent: Path, keep: Path) -> None:
    """Drop all but the newest :data:`KEEP` digest directories beside ``keep``, and of those only
    the ones no process has used for :data:`IN_USE_S` (each import touches its directory)."""
    try:
        others = sorted((p for p in parent.glob("src-*") if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
        stale = time.time() - IN_USE_S
        old = [p for p in others[KEEP - 1 :] if p.stat().st_mtime < stale]
    except OSError:
        return
    for path in old:
        shutil.rmtree(path, ignore_errors=True)


def use_source_keyed_cache() -> Path | None:
    """Point numba's cache at ``<base>/src-<digest>`` and return it (None when it cannot be made).

    ``<base>`` is ``$NUMBA_CACHE_DIR`` when the user set it, else the user cache directory
    (``platformdirs``) under ``btc-quant/numba``."""
    if os.environ.get("BTC_QUANT_NUMBA_CACHE") == "numba":  # opt out: numba's own per-file rule
        return None
    base = os.environ.get("NUMBA_CACHE_DIR")
    if base and Path(base).name.startswith("src-"):  # set by a btc-quant parent process
        base = str(Path(base).parent)
    if not base:
        import platformdirs

        base = str(Path(platformdirs.user_cache_dir("btc-quant")) / "numba")
    try:
        target = Path(base) / f"src-{source_digest(_package_roots())}"
        target.mkdir(parents=True, exist_ok=True)
        os.utime(target)
    except OSError:
        return None  # an unwritable cache: numba compiles in memory, as it does without cache
    _prune(Path(base), target)
    # child processes (Dask workers, the CLI's subprocesses) inherit it and derive the same one
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    numba = sys.modules.get("numba")
    if numba is not None:  # imported before btc_quant: its config has read the environment already
        numba.config.CACHE_DIR = str(target)
    return target
