"""Write the options table of docs/reference/options.rst from geows' Config.

The command line, the ini reader and this page all come from the fields of
:class:`geows.config.Config`, so the page cannot drift from ``--help``::

    python docs/gen_options.py           # rewrite the table in place
    python docs/gen_options.py --check   # exit 1 if the page is out of date

Only the text between the two marker comments is generated; the prose
around it is written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Optional

from geows.config import Config

PAGE = Path(__file__).resolve().parent / "reference" / "options.rst"
BEGIN = ".. BEGIN GENERATED OPTIONS (python docs/gen_options.py)"
END = ".. END GENERATED OPTIONS"

#: How a field's annotation reads in the table.
KINDS = {
    "bool": "flag",
    "int": "integer",
    "float": "number",
    "str": "text",
    "Optional[str]": "text",
    "list[str]": "text, repeatable",
}


def _escape(text: str) -> str:
    """Help text as plain reStructuredText (no accidental markup)."""
    text = re.sub(r"([\\*`|])", r"\\\1", text)
    return re.sub(r"(\w)_(?!\w)", r"\1\\_", text)  # "name_" is a reference


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory()


def _show_default(value: Any, name: str = "") -> str:
    if name == "app":
        return "required"
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"``{value:g}``"
    return f"``{value}``"


def _names(f: Any) -> str:
    names = [f.name.replace("_", "-"), *f.metadata["aliases"]]
    shown = [f"``--{n}``" for n in names]
    if f.name == "app":
        shown.insert(0, "``APP``")
    elif str(f.type) == "bool":
        shown.append(f"``--no-{names[0]}``")
    return ", ".join(shown)


def _kind(f: Any) -> str:
    kind = KINDS.get(str(f.type), str(f.type))
    metavar: Optional[str] = f.metadata.get("metavar")
    if metavar and f.name != "app":
        kind = f"{kind} (``{metavar}``)"
    return kind


def render() -> str:
    """The generated block: a list-table, one row per Config field."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 34 16 12 38",
        "",
        "   * - Option (and aliases)",
        "     - Value",
        "     - Default",
        "     - What it does",
    ]
    for f in fields(Config):
        lines += [
            f"   * - {_names(f)}",
            f"     - {_kind(f)}",
            f"     - {_show_default(_default(f), f.name)}",
            f"     - {_escape(f.metadata['help'])}",
        ]
    return "\n".join(lines) + "\n"


def splice(page: str, block: str) -> str:
    """``page`` with the text between the markers replaced by ``block``."""
    start = page.index(BEGIN) + len(BEGIN)
    stop = page.index(END, start)
    return page[:start] + "\n\n" + block + "\n" + page[stop:]


def main(argv: Optional[list[str]] = None) -> int:
    """Rewrite the page, or with ``--check`` only say whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the page is out of date"
    )
    args = parser.parse_args(argv)
    page = PAGE.read_text(encoding="utf-8")
    fresh = splice(page, render())
    if args.check:
        if fresh != page:
            print(f"{PAGE} is out of date: run python docs/gen_options.py")
            return 1
        return 0
    if fresh != page:
        PAGE.write_text(fresh, encoding="utf-8")
        print(f"rewrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
