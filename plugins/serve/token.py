"""The dashboard's access token: generated on first start, kept in a file only its owner can read.

The token is never printed or logged; ``quant serve`` prints the file's path. Every request must
carry it (``Authorization: Bearer <token>``, or the HttpOnly same-site cookie the page gets from
``POST /api/session``).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from btc_quant.sdk import ConfigError


def default_token_path(home: Path) -> Path:
    return Path(home) / "serve" / "token"


def read_token(path: Path) -> str:
    """The token in ``path``; refuses a file others can read or an empty one (one line, exit 2)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist", hint="create it with a long random line and chmod 600 it") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"token file {path} can be read by others (mode {stat.S_IMODE(mode):o})", hint=f"chmod 600 {path}")
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ConfigError(f"token file {path}: the token must be at least 16 characters")
    return token


def ensure_token(path: Path) -> tuple[str, bool]:
    """The token in ``path``, creating it (0600, 256 random bits) if missing; (token, created)."""
    if path.exists():
        return read_token(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token, True
