"""Generated blocks of a markdown page: ``<!-- NAME: start -->`` ... ``<!-- NAME: end -->``.

The scripts that write tables into pages (gen_results.py, model_families_tables.py) fill their
blocks with :func:`fill`; the tests compare the committed text with a fresh fill.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping


def block_pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(f"<!-- {name}: start -->") + r"\n(.*?)\n?" + re.escape(f"<!-- {name}: end -->"), re.S)


def fill(text: str, blocks: Mapping[str, Callable[[], str]], page: str) -> str:
    """``text`` with every named block rewritten by its function; SystemExit naming a missing block."""
    for name, make in blocks.items():
        pattern = block_pattern(name)
        if not pattern.search(text):
            raise SystemExit(f"{page}: no <!-- {name}: start --> ... <!-- {name}: end --> block to fill")
        body = make()
        text = pattern.sub(lambda _: f"<!-- {name}: start -->\n{body}\n<!-- {name}: end -->", text)
    return text
