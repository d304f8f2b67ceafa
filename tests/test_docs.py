"""The user-facing text is true to the code and speaks of the product only.

- README.md names every command that the live ``aromni --help`` lists, with its man page, and stays short;
- relative links in README.md and docs/*.md lead to files that exist;
- README, docs, man pages and the model card (and its template) hold no development narrative;
- no comment in the code cites a document that is not in the repository.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
README_MAX_BYTES = 15_000
CODE_DIRS = ("core", "commands", "aromni_cli", "recipes", "scripts", "tests", "benchmarks")
CODE_EXTS = (".py", ".yaml", ".yml", ".sh", ".in")
# Documents that code comments used to cite but the repository does not hold.
MISSING_DOCS = ("reference.md", "tokenizers-and-backbone", "ar-omni-official", "anchors.md", "docs/reference")
# Development narrative: which session, which rebuild, which issue, which probe.
ORDINAL = (r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
           r"this|that|previous|earlier|later|next|rejected")
NARRATIVE = [re.compile(p, re.IGNORECASE) for p in (
    rf"\b({ORDINAL}) (session|rebuild)s?\b",
    r"\bsessions? (was|were|had|ran|measured)\b",
    r"\blent to\b",
    r"\bissues? #?\d+\b",
    r"\bissue-\d+\b",
    r"§",
    r"\bprobe (script|run)s?\b",
    r"\boutside the repo\b",
)]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _help_commands() -> list[str]:
    """The commands the live CLI lists under "Commands:" in ``aromni --help``."""
    r = subprocess.run([sys.executable, "-m", "aromni", "--help"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("Commands:", 1)[1].splitlines()
    names = [m.group(1) for line in lines if (m := re.match(r"^  ([a-z][a-z0-9-]*)\b", line))]
    assert len(names) >= 10, r.stdout
    return names


def _user_docs() -> list[str]:
    return ([README, os.path.join(ROOT, "core", "assets", "default", "MODEL_CARD.md"),
             os.path.join(ROOT, "recipes", "default", "MODEL_CARD.md.in")]
            + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
            + sorted(glob.glob(os.path.join(ROOT, "man", "*.1"))))


def test_readme_lists_every_command_with_its_man_page():
    text = _read(README)
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for name in _help_commands():
        assert f"| `{name}` |" in table, f"aromni {name} is not in README.md's command table"
        assert f"(man/aromni-{name}.1)" in table, f"README.md does not link man/aromni-{name}.1"


def test_readme_is_short():
    size = len(_read(README).encode("utf-8"))
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES})"


@pytest.mark.parametrize("path", [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(path):
    text = _read(path)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        assert os.path.exists(os.path.join(os.path.dirname(path), file)), \
            f"{os.path.relpath(path, ROOT)} links {target}, which does not exist"


def test_no_development_narrative():
    found = []
    for path in _user_docs():
        for n, line in enumerate(_read(path).splitlines(), 1):
            found += [f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}" for p in NARRATIVE if p.search(line)]
    assert not found, "development narrative in user-facing text:\n" + "\n".join(found)


def _code_files() -> list[str]:
    me = os.path.abspath(__file__)
    return sorted(p for d in CODE_DIRS for p in glob.glob(os.path.join(ROOT, d, "**", "*"), recursive=True)
                  if p.endswith(CODE_EXTS) and os.path.isfile(p) and os.path.abspath(p) != me)


def test_code_cites_only_documents_in_the_repo():
    found = []
    for path in _code_files():
        rel = os.path.relpath(path, ROOT)
        for n, line in enumerate(_read(path).splitlines(), 1):
            bad = [d for d in MISSING_DOCS if d in line]
            if "§" in line:
                bad.append("§")
            if re.search(r"\bissue #?\d+", line, re.IGNORECASE):
                bad.append("an issue number")
            for doc in re.findall(r"\bdocs/[\w./-]*\w", line):  # a docs/ path must exist
                if not os.path.exists(os.path.join(ROOT, doc)):
                    bad.append(doc)
            found += [f"{rel}:{n}: cites {b}: {line.strip()}" for b in bad]
    assert not found, "code cites documents that are not in the repository:\n" + "\n".join(found)
