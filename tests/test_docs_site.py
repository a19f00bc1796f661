"""The documentation site builds without a warning and works offline; the README stays short.

The pages' examples are run by tests/docs/examples.py; here, the site as a whole.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).parent / "mkdocs"
README_MAX_LINES = 150


class _Resources(HTMLParser):
    """Everything a page makes the browser load: scripts, styles, images, frames, fonts."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video") and found.get("src"):
            self.loaded.append(found["src"] or "")
        if tag == "link" and found.get("href") and found.get("rel") != "alternate":
            rel = found.get("rel") or ""
            if any(kind in rel for kind in ("stylesheet", "preload", "preconnect", "icon")):
                self.loaded.append(found["href"] or "")


def _external(url: str) -> bool:
    return re.match(r"^(https?:)?//", url) is not None


@pytest.mark.timeout(120)
async def test_the_site_builds_strictly_without_a_warning_and_loads_nothing_from_elsewhere(
    tmp_path: Path,
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(MKDOCS),
        "build",
        "--strict",
        "--site-dir",
        str(tmp_path / "site"),
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    output = out.decode()
    assert process.returncode == 0, output
    assert "WARNING" not in output, output

    pages = sorted((tmp_path / "site").rglob("*.html"))
    assert len(pages) >= 16
    for page in pages:
        resources = _Resources()
        resources.feed(page.read_text())
        assert resources.loaded, page
        assert not [url for url in resources.loaded if _external(url)], page
    for style in (tmp_path / "site").rglob("*.css"):
        assert not re.search(r"@import\s+url\(\s*['\"]?(https?:)?//", style.read_text()), style

    # The benchmark figures are included from the results files the benchmarks write, every
    # one of them, never typed in.
    source = (ROOT / "docs" / "operations" / "benchmarks.md").read_text()
    for results in sorted((ROOT / "docs" / "benchmarks" / "results").glob("*.md")):
        assert f'--8<-- "{results.relative_to(ROOT)}"' in source, results
    built = (tmp_path / "site" / "operations" / "benchmarks.html").read_text()
    assert "--8&lt;--" not in built and "--8<--" not in built


def test_the_readme_is_short_and_its_links_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "make run" in readme and "make test" in readme
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not _external(link) and "://" not in link]
    assert local
    assert not [link for link in local if not (ROOT / link).exists()]
