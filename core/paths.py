"""Where btc-quant keeps its files: ``$QUANT_HOME`` or the platform's user data dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir(env: dict[str, str] | None = None) -> Path:
    """The user data dir (created on first use): stores, run results, live journals."""
    env = os.environ if env is None else env
    root = Path(env["QUANT_HOME"]) if env.get("QUANT_HOME") else Path(platformdirs.user_data_dir("btc-quant"))
    root.mkdir(parents=True, exist_ok=True)
    return root
