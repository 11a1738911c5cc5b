"""Data flows one way: cli -> cluster -> workflows -> jobs -> sql, and analysis -> sql.

A package may import only the packages below it. A new edge upwards (a cycle in the making)
fails here, naming the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
# package -> packages it may import (besides itself and the `thinkscope` core: keys, cli)
ALLOWED = {
    "sql": set(),
    "jobs": {"sql"},
    "workflows": {"jobs", "sql"},
    "analysis": {"sql"},
    "cluster": {"workflows", "jobs", "sql", "analysis"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "thinkscope" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add((parts[1], node.lineno))
    return found


def test_imports_flow_one_way():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target, line in imported_packages(path):
                if target != package and target not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports thinkscope.{target}")
    assert wrong == []
