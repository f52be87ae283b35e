"""Paste the re-rendered equal-NFE tables (docs/compare_*/equal_nfe.md, written by scripts/fair_tables.py) into the
sections of docs/results.md that name their folder, so that the page and the folders cannot disagree.

A section is a `### ...` header naming `docs/compare_<x>/`; its two tables (from the "**Mean / 10th" line to the last
table row before the next blank-line-separated paragraph or header) are replaced by the folder's equal_nfe.md.

    python scripts/paste_equal_nfe.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results.md"


def tables_of(folder: str) -> list[str]:
    """The equal_nfe.md of ``folder`` without its first (intro) line."""
    lines = (ROOT / "docs" / folder / "equal_nfe.md").read_text().splitlines()
    return lines[2:] if len(lines) > 2 and not lines[1].strip() else lines[1:]


def main() -> None:
    lines = PAGE.read_text().splitlines()
    out, i, pasted = [], 0, []
    while i < len(lines):
        line = lines[i]
        out.append(line)
        found = re.search(r"`docs/(compare_[a-z_]+)/`", line) if line.startswith("### ") else None
        i += 1
        if not found or not (ROOT / "docs" / found.group(1) / "equal_nfe.md").exists():
            continue
        start = i
        while start < len(lines) and not lines[start].startswith("**Mean / 10th"):
            if lines[start].startswith("#"):
                break
            out.append(lines[start])
            start += 1
        if start >= len(lines) or not lines[start].startswith("**Mean / 10th"):
            i = start
            continue
        end, tables_seen = start, 0
        while end < len(lines) and not lines[end].startswith("#"):  # two tables: stop after the second one ends
            if lines[end].startswith("|") and (end + 1 >= len(lines) or not lines[end + 1].startswith("|")):
                tables_seen += 1
                if tables_seen == 2:
                    end += 1
                    break
            end += 1
        out.extend(tables_of(found.group(1)))
        pasted.append(found.group(1))
        i = end
    PAGE.write_text("\n".join(out) + "\n")
    print(f"pasted into {PAGE.relative_to(ROOT)}: {', '.join(pasted) or 'nothing'}")


if __name__ == "__main__":
    main()
