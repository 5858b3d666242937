"""numba's cache is keyed by the sources of every compiled file, so no kernel runs a stale callee."""

from __future__ import annotations

import os
import subprocess
import sys

from btc_quant.core import compiled_cache


def _tree(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "venue.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef fee(q):\n    return q * 0.0002\n")
    (root / "loop.py").write_text("from numba import njit\nfrom .venue import fee\n")
    (root / "grid.py").write_text("from btc_quant.core.compiled import njit\n\n@njit(cache=True)\ndef step(p):\n    return p * 1.01\n")
    (root / "cli.py").write_text("print('no compiled code here')\n")
    return root


def test_digest_follows_compiled_sources_only(tmp_path):
    root = _tree(tmp_path)
    before = compiled_cache.source_digest([root])
    (root / "cli.py").write_text("print('changed, still no compiled code')\n")
    assert compiled_cache.source_digest([root]) == before
    # the callee changes, its caller's file does not: numba alone would keep the caller's cache
    (root / "venue.py").write_text((root / "venue.py").read_text().replace("0.0002", "0.0005"))
    assert compiled_cache.source_digest([root]) != before
    # a file compiled through btc-quant's njit (it need not name numba) counts too
    changed = compiled_cache.source_digest([root])
    (root / "grid.py").write_text((root / "grid.py").read_text().replace("1.01", "1.02"))
    assert compiled_cache.source_digest([root]) != changed


def test_cache_dir_is_a_digest_dir_under_the_users_numba_cache_dir(tmp_path):
    base = tmp_path / "numba_cache"
    code = "import os, btc_quant.core; print(os.environ['NUMBA_CACHE_DIR'])"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(base)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert first.startswith(str(base / "src-")) and os.path.isdir(first)
    # a child of a btc-quant process inherits the digest directory and derives the same one
    again = subprocess.run([sys.executable, "-c", code], env={**env, "NUMBA_CACHE_DIR": first}, capture_output=True, text=True, check=True)
    assert again.stdout.strip() == first


def test_old_digest_dirs_are_pruned(tmp_path):
    for i in range(compiled_cache.KEEP + 3):
        old = tmp_path / f"src-{i:016x}"
        old.mkdir()
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    keep = tmp_path / "src-current"
    keep.mkdir()
    compiled_cache._prune(tmp_path, keep)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "src-current" in left and len(left) == compiled_cache.KEEP
    assert f"src-{compiled_cache.KEEP + 2:016x}" in left  # the newest old ones stay


def test_a_digest_dir_in_use_is_not_pruned(tmp_path):
    """Six checkouts sharing the user cache: none deletes a cache another one used lately (a run
    reading its compiled functions would fail with FileNotFoundError)."""
    recent = []
    for i in range(compiled_cache.KEEP + 3):
        path = tmp_path / f"src-{i:016x}"
        path.mkdir()
        recent.append(path.name)
    keep = tmp_path / "src-current"
    keep.mkdir()
    compiled_cache._prune(tmp_path, keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*recent, "src-current"])
