"""The page at GET / and the headers that keep it from being framed or fed foreign scripts.

The page is one HTML file with one inline <style> and one inline <script>. Its
Content-Security-Policy allows exactly those two, by their SHA-256, and nothing from elsewhere:
it talks only to this server, and shows photos from blob: URLs it makes itself.
"""
from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources


def page_html() -> str:
    return resources.files(__package__).joinpath("page", "index.html").read_text(encoding="utf-8")


def _sources(kind: str, html: str) -> str:
    blocks = re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.S)
    return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                    for b in blocks) or "'none'"


def page_headers(html: str) -> dict[str, str]:
    csp = "; ".join((
        "default-src 'none'",
        f"script-src {_sources('script', html)}",
        f"style-src {_sources('style', html)}",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
