"""The tools behind `make test` and `make docs`: the staged runner (tests/stages.py) and
the book's link checker (tests/docs/check_links.py), on small made-up inputs."""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import check_links  # noqa: E402
import stages  # noqa: E402


def test_counts_read_each_runners_closing_lines():
    cargo = "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured\n" \
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured\n"
    assert stages.counts("unit", cargo)[:3] == (7, 1, 1)
    pytest_out = "tests/e2e/test_a.py ..F\n===== 1 failed, 2 passed, 1 skipped in 3.2s =====\nmake: *** Error 1\n"
    assert stages.counts("e2e", pytest_out)[:3] == (2, 1, 1)
    fuzz = "fuzz config: 100 runs in 11 s, no crash (x)\nfuzz usage: 50 runs in 11 s, no crash (y)\n"
    assert stages.counts("fuzz", fuzz)[3] == "2 targets, 150 runs, no crash"
    assert stages.counts("lint", "anything")[:3] == (None, None, None)


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A Makefile whose targets pass, fail with a long log, or pass; stages mapped onto them."""
    (tmp_path / "Makefile").write_text(
        "ok:\n\t@echo 'test result: ok. 3 passed; 0 failed; 0 ignored'\n"
        "bad:\n\t@for i in $$(seq 1 300); do echo chatter $$i; done; echo 'the real error'; exit 1\n")
    monkeypatch.setattr(stages, "ROOT", tmp_path)
    monkeypatch.setattr(stages, "LOGS", tmp_path / ".run" / "logs")
    monkeypatch.setattr(stages, "STAGES", {
        "unit": (["ok"], "passes", False),
        "lint": (["bad"], "fails", False),
        "build": (["bad"], "fails and stops", True),
        "wasm": (["ok"], "never reached", False),
    })
    return tmp_path


def test_a_failing_stage_shows_its_log_and_the_run_goes_on(fake_repo, capsys):
    rc = stages.main(["lint", "unit"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "[1/2] lint" in out and "FAILED" in out
    assert "the real error" in out and "chatter 300" in out  # the end of a long log, whole lines
    assert "chatter 1\n" not in out  # only its tail: 301 lines are over the limit
    assert "the last 120 of 303 lines of .run/logs/lint.log" in out  # the command, 301 lines, make's error
    assert "ok in" in out and "3 passed" in out  # the next stage still ran
    assert out.rstrip().splitlines()[-1] == "3 passed, 1 failed"
    assert (fake_repo / ".run" / "logs" / "lint.log").read_text().count("chatter") == 300


def test_a_failed_build_stops_the_run(fake_repo, capsys):
    rc = stages.main(["build", "wasm"])
    out = capsys.readouterr().out
    assert rc == 1
    assert any(l.startswith("[2/2] wasm") and l.endswith("skipped") for l in out.splitlines())
    assert out.rstrip().splitlines()[-1] == "0 passed, 2 failed"


def test_all_passing_ends_with_the_plain_closing_line(fake_repo, capsys):
    assert stages.main(["unit"]) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-1] == "3 passed, 0 failed"
    assert len(lines) == 6  # the header, the stage, a blank, the summary's title, its stage, the closing line


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_link_checker_finds_missing_files_and_anchors(tmp_path, capsys):
    book = tmp_path / "book"
    write(book / "index.html", '<a href="limits.html#refusal">ok</a> <a href="limits.html#nope">bad anchor</a>'
                               ' <a href="gone.html">missing</a> <a href="https://example.com/x">external</a>'
                               ' <img src="pic.png">')
    write(book / "limits.html", '<h2 id="refusal">Refusal</h2> <a href="#refusal">self</a>')
    write(book / "pic.png", "")
    write(tmp_path / "docs" / "limits.md", "# Limits\n")
    write(tmp_path / "README.md", "[a](docs/limits.md#refusal) [b](docs/limits.md#nope) [c](docs/none.md)\n"
                                  "```\n[not a link](nowhere.md)\n```\n")
    rc = check_links.main(book, tmp_path / "README.md")
    out = capsys.readouterr().out
    assert rc == 1
    broken = [l for l in out.splitlines() if l.startswith("broken link:")]
    assert broken == [
        "broken link: index.html: limits.html#nope (no such anchor)",
        "broken link: index.html: gone.html (no such file)",
        "broken link: README.md: docs/limits.md#nope (no such anchor in limits.html)",
        "broken link: README.md: docs/none.md (no such file)",
    ]
    assert out.splitlines()[-1] == "links: 2 pages, 8 internal links checked, 4 broken"


def test_link_checker_passes_a_sound_book(tmp_path, capsys):
    book = tmp_path / "book"
    write(book / "index.html", '<a href="a.html#x">a</a>')
    write(book / "a.html", '<p id="x"></p>')
    write(tmp_path / "README.md", "[book](book/index.html)\n")
    assert check_links.main(book, tmp_path / "README.md") == 0
    assert capsys.readouterr().out.strip() == "links: 2 pages, 2 internal links checked, 0 broken"


def test_the_repositorys_book_sources_name_every_page(tmp_path):
    """Every page under docs/ is in SUMMARY.md (mdBook would silently leave it out)."""
    docs = HERE.parent.parent / "docs"
    summary = (docs / "SUMMARY.md").read_text()
    pages = {p.name for p in docs.glob("*.md")} - {"SUMMARY.md"}
    missing = [p for p in sorted(pages) if f"]({p})" not in summary]
    assert not missing, missing


def test_stages_runs_as_a_script():
    r = subprocess.run([sys.executable, str(HERE.parent / "stages.py"), "nonsense"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown stage(s): nonsense" in r.stderr
