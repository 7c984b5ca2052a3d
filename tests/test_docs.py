"""The README and docs/: the README stays short, and every relative link and #anchor in them resolves."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages other branches write; drop a name here once its page has landed.
PENDING = set()
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page):
    """GitHub's anchors for the headings of `page` (outside fenced code)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {
        re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        for title in re.findall(r"^#+\s+(.*)$", text, flags=re.M)
    }


def broken_links(page):
    out = []
    for link in LINK.findall(page.read_text()):
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            if target.name not in PENDING:
                out.append(link)
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            out.append(link)
    return out


def test_readme_is_short_and_ends_with_links_into_docs():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    last = [l for l in lines if l.strip()][-12:]
    assert all(l.startswith("- [docs/") for l in last), last


def test_every_link_and_anchor_resolves():
    assert {p.name for p in PAGES} >= {"README.md", "architecture.md", "api.md", "training.md", "results.md"}
    broken = {p.name: broken_links(p) for p in PAGES}
    assert not any(broken.values()), broken


def test_the_check_finds_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nowhere) [gone](missing.md) [landed](runtime.md)\n")
    assert broken_links(page) == ["#nowhere", "missing.md", "runtime.md"]  # nothing is pending any more


def test_the_screenshot_is_small():
    shot = ROOT / "docs" / "img" / "upload.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 300_000
