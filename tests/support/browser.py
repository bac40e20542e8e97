"""A real headless browser for the web page's tests: Debian's Chromium (the `chromium`
package, installed by .ci/install-browser) driven by Playwright for Python, which downloads no
browser of its own when given `executable_path`. The `browser` fixture is in
tests/web/conftest.py."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"  # Debian's package `chromium` (.ci/install-browser)
# What a sandboxed, offline machine needs: no sandbox as root, and no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
