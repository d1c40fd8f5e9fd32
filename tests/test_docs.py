"""The documentation stays true to the code: the bad-input table in docs/reliability.md is the one
tests/test_bad_input.py's CASES generate, every relative link in README.md and docs/*.md leads to a
file (and a heading) that exists, every page under docs/ is linked from the README, and the README
stays a front door (under 12 KB).

After changing CASES, regenerate the table: `python tests/test_docs.py --write`.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RELIABILITY = DOCS / "reliability.md"
README_LIMIT = 12 * 1024

BEGIN = "<!-- bad-input table: generated from tests/test_bad_input.py CASES by `python tests/test_docs.py --write`; do not edit by hand -->"
END = "<!-- end of the generated bad-input table -->"
# Groups whose cases are refused on the command line: the user gets exit code 2 and one line.
EXIT_2_GROUPS = {"file", "option", "model"}
HEADER = "| case | what the user gets | test |\n|---|---|---|"


# ---------------------------------------------------------------- the bad-input table

def cell(text: str) -> str:
    return text.replace("|", "\\|")


def row(case: object) -> str:
    """One table row: the case's id (`group: name`, its pytest id too), what the user gets, the test."""
    gets = f"exit 2: {case.gets}" if case.group in EXIT_2_GROUPS else case.gets
    return f"| {cell(str(case))} | {cell(gets)} | `tests/test_bad_input.py::test_bad_input[{cell(str(case))}]` |"


def render(cases: list) -> str:
    """The generated block, markers included."""
    intro = (f"Each case is one row of `tests/test_bad_input.py` ({len(cases)} cases) or, below it, a test "
             "elsewhere. Every command prints one line `emotalk-stream: error: ...` (no usage block, no "
             "traceback without `--debug`) and exits 2; a bad control message is refused with its reason and "
             "the stream goes on for everyone.")
    return "\n".join([BEGIN, "", intro, "", HEADER, *(row(c) for c in cases), "", END])


def generated_block(text: str) -> str:
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{RELIABILITY} must hold the markers once each"
    start = text.index(BEGIN)
    return text[start:text.index(END) + len(END)]


def split_row(line: str) -> list[str]:
    """The cells of a Markdown table row, `\\|` being a literal bar."""
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def table_rows(block: str) -> dict[str, list[str]]:
    """The generated table's rows by their first cell, the case id; a repeated id fails."""
    rows: dict[str, list[str]] = {}
    for line in block.splitlines():
        if not line.startswith("| ") or line.startswith(("| case |", "|---")):
            continue
        cells = split_row(line)
        assert cells[0] not in rows, f"the table has the case {cells[0]!r} twice"
        rows[cells[0]] = cells
    return rows


def bad_input_cases() -> list:
    import test_bad_input  # tests/ is on sys.path: pytest puts it there (no __init__.py), and so does running this file

    return test_bad_input.CASES


def test_every_bad_input_case_is_a_row_of_the_table_and_every_row_a_case() -> None:
    cases = bad_input_cases()
    rows = table_rows(generated_block(RELIABILITY.read_text(encoding="utf-8")))
    ids = [str(c) for c in cases]
    missing = [i for i in ids if i not in rows]
    extra = [r for r in rows if r not in ids]
    assert not missing, f"cases without a row in {RELIABILITY.name}: {missing}; run python tests/test_docs.py --write"
    assert not extra, f"rows of {RELIABILITY.name} that are no case of test_bad_input.py: {extra}"
    assert list(rows) == ids, "the table's rows are not in the order of CASES; run python tests/test_docs.py --write"


def test_each_row_says_what_its_case_says() -> None:
    cases = bad_input_cases()
    rows = table_rows(generated_block(RELIABILITY.read_text(encoding="utf-8")))
    wrong = [str(c) for c in cases if rows.get(str(c), split_row(row(c))) != split_row(row(c))]
    assert not wrong, f"rows that do not say what their cases say: {wrong}; run python tests/test_docs.py --write"


def test_the_generated_block_is_exactly_what_the_cases_render() -> None:
    """Also the count in the text above the table."""
    assert generated_block(RELIABILITY.read_text(encoding="utf-8")) == render(bad_input_cases())


def test_the_row_parser_reads_what_the_renderer_writes() -> None:
    """The checks above rely on the parser; a case with a bar in it must survive the round trip."""
    from types import SimpleNamespace

    class Fake(SimpleNamespace):
        def __str__(self) -> str:
            return f"{self.group}: {self.name}"

    cases = [Fake(group="option", name="--fps 45", gets="`argument --fps`"),
             Fake(group="osc", name="a | bar", gets="refused: `x|y`")]
    rows = table_rows(render(cases))
    assert list(rows) == ["option: --fps 45", "osc: a | bar"]
    assert rows["option: --fps 45"][1] == "exit 2: `argument --fps`"
    assert rows["osc: a | bar"][1] == "refused: `x|y`"


# ---------------------------------------------------------------- links

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text without code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return [a or b for a, b in LINK.findall(prose(text))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def broken_links(page: Path) -> Iterable[str]:
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path_part, _, fragment = target.partition("#")
        destination = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not destination.exists():
            yield f"{target} (no such file)"
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            yield f"{target} (no heading #{fragment} in {shown(destination)})"


def test_every_relative_link_leads_to_an_existing_file_and_heading() -> None:
    assert DOCS.is_dir() and len(pages()) > 2
    broken = {str(p.relative_to(ROOT)): list(broken_links(p)) for p in pages()}
    assert not {p: b for p, b in broken.items() if b}, broken


def test_the_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A `code` heading: yes\n\n## Twice\n\n## Twice\n")
    page.write_text("[ok](there.md) [ok](there.md#a-code-heading-yes) [ok](there.md#twice-1) [web](https://x.y/z)\n"
                    "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
                    "[gone](gone.md) [bad anchor](there.md#nope) [self](#nothing-here)\n")
    assert list(broken_links(page)) == ["gone.md (no such file)", "there.md#nope (no heading #nope in there.md)",
                                        "#nothing-here (no heading #nothing-here in page.md)"]


def test_every_page_under_docs_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README.read_text(encoding="utf-8"))
              if t.partition("#")[0]}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"pages under docs/ that README.md does not link: {unlinked}"


def test_the_readme_stays_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} and move details to docs/"


# ---------------------------------------------------------------- regeneration

def write() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    text = RELIABILITY.read_text(encoding="utf-8")
    new = text.replace(generated_block(text), render(bad_input_cases()))
    if new != text:
        RELIABILITY.write_text(new, encoding="utf-8")
    print(f"{RELIABILITY.relative_to(ROOT)}: {'rewritten' if new != text else 'already up to date'}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_docs.py --write   (regenerates the bad-input table in docs/reliability.md)")
    write()
