#!/usr/bin/env python3
"""Fails on a broken internal link in the built book or in the README.

mdBook has no link checker of its own. This one reads the built HTML (so it checks what
readers get, after mdBook's .md -> .html rewriting): every relative href and src must
name a file in the book, and every #fragment an id in that file. Then the README's
relative links and images must name files in the repository, and a link into docs/*.md
with a #fragment must name a heading of that page. External links (with a scheme) are
not followed: the machine is offline.

Usage: check_links.py BOOK_DIR README.md
"""

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

SKIP_PAGES = {"print.html", "404.html"}  # generated copies of the pages, or no links of ours


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("id", "name") and v:
                self.ids.add(v)
            if k in ("href", "src") and v is not None and tag in ("a", "img"):
                self.links.append(v)


def parse(path, cache={}):
    if path not in cache:
        page = Page()
        page.feed(path.read_text(errors="replace"))
        cache[path] = page
    return cache[path]


def external(link):
    return bool(urlsplit(link).scheme) or link.startswith("//")


def check_book(book):
    broken, count = [], 0
    pages = sorted(p for p in book.rglob("*.html") if p.name not in SKIP_PAGES)
    for page in pages:
        for link in parse(page).links:
            if external(link):
                continue
            count += 1
            parts = urlsplit(link)
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            rel = page.relative_to(book)
            if book.resolve() not in target.resolve().parents and target.resolve() != book.resolve():
                broken.append(f"{rel}: {link} (outside the book)")
            elif not target.is_file():
                broken.append(f"{rel}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse(target).ids:
                broken.append(f"{rel}: {link} (no such anchor)")
    return pages, count, broken


def check_readme(readme, book):
    text = readme.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    broken, count = [], 0
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if external(link):
            continue
        count += 1
        parts = urlsplit(link)
        target = (readme.parent / unquote(parts.path)) if parts.path else readme
        if not target.exists():
            broken.append(f"{readme.name}: {link} (no such file)")
            continue
        if parts.fragment and target.suffix == ".md":
            try:
                page = target.resolve().relative_to((readme.parent / "docs").resolve())
            except ValueError:
                continue  # a Markdown file outside the book: GitHub's anchors, not ours
            html = book / page.with_suffix(".html")
            if not html.is_file() or unquote(parts.fragment) not in parse(html).ids:
                broken.append(f"{readme.name}: {link} (no such anchor in {page.with_suffix('.html')})")
    return count, broken


def main(book, readme):
    book, readme = Path(book), Path(readme)
    if not (book / "index.html").is_file():
        sys.exit(f"links: no book at {book} (run mdbook build first)")
    pages, n_book, broken = check_book(book)
    n_readme, broken_readme = check_readme(readme, book)
    broken += broken_readme
    for b in broken:
        print(f"broken link: {b}")
    print(f"links: {len(pages)} pages, {n_book + n_readme} internal links checked, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
