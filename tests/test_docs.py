"""The user-facing pages: README.md and the MkDocs site under docs/.

- README stays a short user's page (at most 250 lines);
- no page narrates how numbers were obtained: no dates, machine names, issue numbers or
  first-person narration outside the provenance sections of the results pages;
- `mkdocs build --strict` passes (broken links and anchors, missing pages, API docstrings);
- the results pages regenerate byte-identical from the committed records (`benchmarks/pages.py`);
- every `docs/...md#anchor` pointer in src/ resolves, and every Python block compiles.
(`tests/test_readme_commands.py` checks every `steerflow` command line of README.md and docs/.)"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
FORBIDDEN = {
    "a date": re.compile(rf"\b(19|20)\d\d-\d\d-\d\d\b|\b({MONTHS})( \d{{1,2}},?)? (19|20)\d\d\b|\b\d{{1,2}} ({MONTHS}) (19|20)\d\d\b"),
    "a machine name": re.compile(r"\b(EPYC|Xeon|Ryzen|Threadripper|vCPUs?|VMs?)\b|\bAMD\b|\bIntel\b|\bcores? [0-9]\b(?! (?:seconds|minutes|hours))"),
    "an issue reference": re.compile(r"\b[Ii]ssues? #?\d+\b|\bPR #?\d+\b"),
    "first-person narration": re.compile(r"(?:^|[\s(\"'])I (?=[a-z])|\bI'(?:m|ve|d|ll)\b|\b[Ww]e (?=[a-z])|\b[Oo]ur\b|(?<![-/_.])\b[Mm]y\b(?![-_/.])"),
}


def narration(text: str) -> list[str]:
    """'line N: <kind>: <match>' for each forbidden pattern outside fenced code's comments-free
    sections that count as provenance: from a `## Provenance` heading to the next heading."""
    found, in_provenance = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#") and not line.startswith("#!"):
            in_provenance = line.lstrip("#").strip().lower().startswith("provenance")
        if in_provenance:
            continue
        for kind, pattern in FORBIDDEN.items():
            if m := pattern.search(line):
                found.append(f"line {number}: {kind}: {m.group(0).strip()!r}")
    return found


@pytest.mark.parametrize("sample, kind", [
    ("Measured on 2026-12-04 on a CI runner.", "a date"),
    ("Timed in December 2026, from nothing.", "a date"),
    ("on a 2-core AMD EPYC VM", "a machine name"),
    ("pinned to core 1 while the study ran", "a machine name"),
    ("an Intel Xeon machine", "a machine name"),
    ("as issue 9 asked", "an issue reference"),
    ("I re-evaluated seed 0's final checkpoint", "first-person narration"),
    ("what we measured here", "first-person narration"),
])
def test_the_checker_finds_each_kind(sample, kind):
    assert any(kind in f for f in narration(sample)), narration(sample)


def test_the_checker_leaves_math_commands_and_provenance_alone():
    text = "\n".join(["z ~ N(0, I) and N(0, I_d); 2 cores; `--workers 2`; a 2-core CPU; one core",
                      "## Provenance", "| unit | cpu: AMD EPYC, 2 cores | 2026-12-02 | core 1 |", "## Next",
                      "LPS is at or above the reference."])
    assert narration(text) == []


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_page_narrates(path):
    assert narration(path.read_text()) == [], f"{path.relative_to(ROOT)} narrates"


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"


def test_the_readme_links_the_papers_licence_and_docs():
    text = README.read_text()
    for needle in ("arxiv.org", "QPILOTS", "Latent Policy Steering", "LICENSE", "CITATION.cff", "docs/results/",
                   "make run", "make test"):
        assert needle in text, needle
    assert (ROOT / "LICENSE").is_file() and (ROOT / "CITATION.cff").is_file()


def _pages_module():
    spec = importlib.util.spec_from_file_location("pages", ROOT / "benchmarks" / "pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pick_section_names_the_family_that_leads_on_more_test_beds():
    from collections import Counter

    first = _pages_module()._first_family
    assert first(Counter({"bc-fm": 3, "qc-fql": 1, "bc-mf": 1})) == "behaviour cloning"
    assert first(Counter({"qc-fql": 2, "bc-fm": 1, "lpsd": 1, "bc-mf": 1})) == "a row with a critic"
    assert first(Counter({"bc-mf": 1, "lps-min": 1})) == "behaviour cloning or a row with a critic"


def test_the_results_pages_regenerate_from_the_records():
    module = _pages_module()
    stale = [str(p.relative_to(ROOT)) for p, data in module.render_all().items()
             if not p.is_file() or p.read_bytes() != data]
    assert stale == [], f"run `python benchmarks/pages.py`: {stale}"


def test_every_results_page_follows_the_template():
    module = _pages_module()
    for name, fn in module.PAGES.items():
        if fn is None or name == "index.md":
            continue
        text = (DOCS / "results" / name).read_text()
        heads = [line for line in text.splitlines() if line.startswith("## ")]
        assert text.count("**Question.**") == 1, name
        for section in ("## Protocol", "## Command", "## Findings", "## Provenance"):
            assert section in heads, (name, section)
        assert heads[-1] == "## Provenance", name


def _anchors(page: Path) -> set[str]:
    """Heading ids of a Markdown page: explicit `{#id}`, else the toc slug."""
    out = set()
    for line in page.read_text().splitlines():
        if not line.startswith("#"):
            continue
        if m := re.search(r"\{#([\w-]+)\}\s*$", line):
            out.add(m.group(1))
        else:
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title)).strip("-"))
    return out


def test_code_pointers_to_the_docs_resolve():
    pointers = set()
    for path in (ROOT / "src").rglob("*.py"):
        pointers |= set(re.findall(r"docs/([\w/.-]+\.md)(?:#([\w-]+))?", path.read_text()))
    assert ("algorithms.md", "lps") in pointers
    for page, anchor in sorted(pointers):
        assert (DOCS / page).is_file(), page
        assert not anchor or anchor in _anchors(DOCS / page), f"docs/{page}#{anchor}"


def test_src_points_to_nothing_outside_the_repository():
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"SPEC §|papers/0|reference/\w+\.md", text), path


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_python_block_compiles_and_calls_the_api_as_it_is(path):
    """Each block parses, and each `steerflow.NAME(...)` call binds to NAME's signature (the README's
    block is also run verbatim by tests/test_export.py; the docs' copies must equal it)."""
    import inspect

    import steerflow

    for block in _python_blocks(path):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "steerflow":
                fn = getattr(steerflow, node.func.attr)  # AttributeError: the API has no such name
                inspect.signature(fn).bind(*node.args, **{k.arg: k.value for k in node.keywords})


def test_the_docs_copies_of_the_tested_python_block_equal_the_readme_s():
    tested = re.search(r"<!-- python-api:[^>]*-->\s*```python\n(.*?)```", README.read_text(), re.S).group(1)
    copies = [b for p in PAGES[1:] for b in _python_blocks(p) if "load_policy" in b]
    assert copies and all(b == tested for b in copies)


def test_the_site_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                             "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "train_agent" in api and "load_policy" in api
