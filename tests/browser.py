"""Browser tests drive Debian's Chromium through Playwright (Playwright
cannot download browsers here). `make test` installs chromium when it is
missing; without it a browser test is skipped on a developer's machine and
fails in CI, where nothing may be skipped silently."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    message = "Debian's chromium is not installed (make test installs it with apt-get)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
