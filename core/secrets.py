"""Keeping API keys and passwords out of logs, reprs, errors and printed config.

Config fields holding secrets are pydantic ``SecretStr`` (masked in ``repr`` and ``config show``).
Every secret value the config layer sees is also registered here, and a logging filter replaces
it with ``***`` in every log record, whatever the message (an exception text quoting a URL with a
password, a request dump). A TOML config file that holds a secret and is readable by group or
others is recorded: the CLI warns, and a live broker refuses to start on it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Config keys whose values are secrets, wherever they appear.
SECRET_KEYS = frozenset({"api_key", "apikey", "secret", "api_secret", "password", "passphrase", "private_key", "token"})

_values: set[str] = set()
insecure_files: dict[Path, str] = {}


def is_secret_key(key: str) -> bool:
    return key.lower() in SECRET_KEYS


def register(value: Any) -> None:
    """Mask ``value`` in all log output from now on (values shorter than 4 characters are ignored)."""
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    if isinstance(text, str) and len(text) >= 4:
        _values.add(text)


def mask(text: str) -> str:
    for value in sorted(_values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def secret_values(data: Any) -> Iterable[str]:
    """Every value under a secret key in a nested dict."""
    if isinstance(data, dict):
        for key, value in data.items():
            if is_secret_key(str(key)) and isinstance(value, str):
                yield value
            else:
                yield from secret_values(value)


def check_file(path: Path, data: dict) -> str | None:
    """Register the file's secrets; return a warning if it holds any and others can read it."""
    found = list(secret_values(data))
    for value in found:
        register(value)
    if not found:
        return None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        message = f"{path} holds secrets and is readable by others (mode {mode:o}); run: chmod 600 {path}"
        insecure_files[Path(path)] = message
        return message
    return None


class MaskingFilter(logging.Filter):
    """Replaces registered secret values in log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _values:
            record.msg = mask(record.getMessage())
            record.args = None
        return True


def install_log_filter() -> None:
    """Attach the masking filter to every handler of the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
