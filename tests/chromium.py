"""Open a page in headless Chromium (Debian's ``chromium`` package) the way a person would, offline.

Returns the DOM after parsing, the browser's console messages (Content-Security-Policy violations
and script errors are logged there) and a screenshot. Tests that need it skip when Chromium is
absent; CI installs it (`apt-get install -y chromium`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="headless Chromium is not installed (apt-get install -y chromium)"
)


@dataclass
class Page:
    dom: str
    console: list[str]
    screenshot: Path
    tags: list[tuple[str, dict]] = field(default_factory=list)
    text: str = ""


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def open_page(path: Path, workdir: Path, width: int = 1280, height: int = 2400) -> Page:
    shot = workdir / f"{path.stem}.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={workdir / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size={width},{height}",
        f"--screenshot={shot}",
        "--dump-dom",
        path.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    console = [m.group(1) for line in done.stderr.splitlines() if (m := CONSOLE.search(line))]
    reader = _Reader()
    reader.feed(done.stdout)
    return Page(done.stdout, console, shot, reader.tags, "".join(reader.text))
