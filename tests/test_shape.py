"""docker_register.py reads top to bottom: its contents list names its sections in order, and no section uses a name
defined in a later one (a reader follows every arrow upwards). What runs downwards goes through the seams:
orchestration is handed its adapters and reporting callbacks by the CLI, at the bottom.

Read from the module's source with ast, without running it."""

from __future__ import annotations

import ast
import bisect
import functools
import re
from pathlib import Path

import docker_register as dr

SOURCE = Path(dr.__file__).read_text()
BANNER = re.compile(r"^# -{20,}\n# (?P<title>[^\n]+)\n# -{20,}$", re.M)


@functools.cache
def sections() -> list[tuple[int, str]]:
    """(first line, title) of each section under a banner, in order, after the module's head (its imports)."""
    return [(1, "head")] + [(SOURCE.count("\n", 0, match.start()) + 1, match["title"])
                            for match in BANNER.finditer(SOURCE)]


def section_at(line: int) -> str:
    return sections()[bisect.bisect_right([start for start, _ in sections()], line) - 1][1]


def bound_inside(node: ast.AST) -> set[str]:
    """Names a definition binds itself: arguments, assignments, loop and comprehension variables, inner defs."""
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)
        elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)) and sub is not node:
            names.add(sub.name)
        elif isinstance(sub, ast.alias):
            names.add((sub.asname or sub.name).split(".")[0])
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            names.add(sub.name)
    return names


def used_at_run_time(node: ast.AST) -> set[str]:
    """Global names a definition reads when it runs (annotations are strings here: not read)."""
    skipped = set()
    for sub in ast.walk(node):
        for annotation in (getattr(sub, "annotation", None), getattr(sub, "returns", None)):
            if annotation is not None:
                skipped.update(id(inner) for inner in ast.walk(annotation))
    return {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)
            and id(sub) not in skipped} - bound_inside(node)


def top_level() -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.parse(SOURCE).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.append((node.name, node))
        elif isinstance(node, ast.Assign):
            found += [(target.id, node) for target in node.targets if isinstance(target, ast.Name)]
    return found


def test_the_contents_list_names_every_section_in_order():
    contents = dr.__doc__.split("Contents, top to bottom", 1)[1]
    names = [re.split(r":| \(", title)[0] for _, title in sections()[1:]]
    assert len(names) >= 8, names
    position = 0
    for name in names:
        assert name in contents[position:], f"{name} is not listed after {contents[:position]!r}"
        position = contents.index(name, position) + len(name)


def test_no_section_uses_a_name_defined_in_a_later_section():
    defined = {}
    for name, node in top_level():
        defined.setdefault(name, node.lineno)
    order = {title: index for index, (_, title) in enumerate(sections())}
    upward = []
    for name, node in top_level():
        here = order[section_at(node.lineno)]
        for used in used_at_run_time(node):
            if used in defined and order[section_at(defined[used])] > here:
                upward.append(f"{name} ({section_at(node.lineno)}) uses {used} ({section_at(defined[used])})")
    assert upward == []


def test_the_guard_sees_a_use_of_a_later_section():
    # The check above can fail: a data type reading a planner function would be caught.
    node = ast.parse("class Registration:\n    def address(self):\n        return batches(self.ip)\n").body[0]
    assert used_at_run_time(node) == {"batches"}
    assert "ip" not in used_at_run_time(node) and "self" not in used_at_run_time(node)
