"""Passwords never leave a process: masking for URLs, log lines, errors and files."""

from __future__ import annotations

import re

_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")
_PASSWORD_KV_RE = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``; safe to log and to store."""
    return _USERINFO_RE.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def mask_secrets(text: str, url: str | None = None) -> str:
    """Remove passwords from free text: URL userinfo, ``password=…`` pairs, and ``url``'s own."""
    if url:
        password = _password_of(url)
        if password:
            text = text.replace(password, "***")
    text = _USERINFO_RE.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _PASSWORD_KV_RE.sub(r"\1***", text)


def _password_of(url: str) -> str | None:
    match = re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:(?P<pw>[^@\s]*)@", url)
    return match["pw"] if match and match["pw"] else None
