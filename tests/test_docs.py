"""The README and docs/ stay true to the tree and the code: every relative link and #anchor
resolves, the README fits a screen, every docs page is one titled subject linked from the README,
and the lists that mirror code (settings left out of the record key, task fields) match it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.results.records import NOT_IN_KEY
from core.paths import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md")), PROJECT_ROOT / "results" / "leaderboard" / "README.md"]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")
PARENTHESES = re.compile(r"\([^()]*\)")


def kind_roles() -> dict[str, tuple[str, ...]]:
    """The roles each kind of user task maps onto a file's fields: the one place this test reads them."""
    from core.items import TASK_KINDS
    return {name: tuple(kind.roles) for name, kind in TASK_KINDS.items()}


def builtin_task_fields() -> dict[str, set[str]]:
    """The file fields each built-in JSON-lines task reads: the one place this test reads them."""
    from core import items
    mappings = {"mednli": items.MEDNLI_FIELDS, "hqs": items.MEQSUM_FIELDS,
                "casehold": items.CASEHOLD_FIELDS, "billsum": items.BILLSUM_FIELDS}
    flat = {task: [[value] if isinstance(value, str) else value for value in fields.values()]
            for task, fields in mappings.items()}
    return {task: {name for names in values for name in names} for task, values in flat.items()}


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `#` there is a comment, a `[x](y)` no link)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


def links(path: Path) -> list[str]:
    return [target for line in prose_lines(path.read_text(encoding="utf-8"))
            for target in LINK.findall(CODE_SPAN.sub("", line))]


def tables(path: Path) -> list[list[list[str]]]:
    """Each Markdown table as rows of cells (header first, the separator row left out)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*prose_lines(path.read_text(encoding="utf-8")), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def listed_names(cell: str) -> list[str]:
    """A cell's comma-separated names, with parenthesised remarks and `optional` dropped."""
    while PARENTHESES.search(cell):
        cell = PARENTHESES.sub("", cell)
    return [name.strip().removeprefix("optional ").strip("` ") for name in cell.split(",") if name.strip()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(PROJECT_ROOT)}")
    assert not broken, f"{page.relative_to(PROJECT_ROOT)}: " + "; ".join(broken)


def test_readme_fits_a_screen_and_keeps_the_ci_test_command():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in text, f"the README's test command differs from .ci/run's {ci!r}"
    assert "./install.sh && python3 run.py" in text


def test_every_docs_page_has_one_title_and_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    for page in DOCS.glob("*.md"):
        titles = [line for line in prose_lines(page.read_text(encoding="utf-8")) if re.match(r"#\s", line)]
        assert len(titles) == 1 and page.read_text(encoding="utf-8").startswith("# "), page.name
        assert page.resolve() in linked, f"docs/{page.name} is not linked from the README"


def test_the_newcomers_map_walks_a_cell_in_fifteen_lines():
    text = (DOCS / "map.md").read_text(encoding="utf-8")
    path = text.split("## The path of a cell", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in path.splitlines() if line.strip()]
    assert 5 <= len(lines) <= 15
    for module in ("run.py", "bench/cell.py", "core/models.py", "core/calibration.py", "pruners/",
                   "evals/suite.py", "bench/results/records.py", "bench/results/tracking.py"):
        assert f"`{module}" in path, module


def test_the_docs_list_of_settings_left_out_of_the_key_is_not_in_key():
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    listed = re.search(r"<!-- not-in-key -->(.*?)<!-- /not-in-key -->", text, re.S)
    assert listed, "docs/results.md lost its not-in-key markers"
    documented = set(re.findall(r"`([^`]+)`", listed.group(1)))
    assert documented == {".".join(path) for path in NOT_IN_KEY}


def test_the_docs_tables_of_task_kinds_name_each_kinds_roles():
    roles = kind_roles()
    documented: set[str] = set()
    for page in [README, *DOCS.glob("*.md")]:
        for table in tables(page):
            header = table[0]
            if header[0] != "kind" or not any("roles" in cell for cell in header):
                continue
            column = next(i for i, cell in enumerate(header) if "roles" in cell)
            for row in table[1:]:
                kind = row[0].strip("`")
                assert kind in roles, f"{page.name}: kind {kind!r} is not one of {sorted(roles)}"
                assert tuple(listed_names(row[column])) == roles[kind], f"{page.name}: kind {kind}"
                documented.add(kind)
    assert documented == set(roles), f"kinds without a documented table row: {set(roles) - documented}"


def test_the_docs_table_of_task_files_names_the_fields_each_reader_reads():
    fields = builtin_task_fields()
    documented: set[str] = set()
    for page in [README, *DOCS.glob("*.md")]:
        for table in tables(page):
            if table[0][0] != "task" or "fields read" not in table[0]:
                continue
            column = table[0].index("fields read")
            for row in table[1:]:
                if row[0] in fields:
                    assert set(listed_names(row[column])) == fields[row[0]], f"{page.name}: task {row[0]}"
                    documented.add(row[0])
    assert documented == set(fields), f"tasks whose fields no docs table lists: {set(fields) - documented}"
