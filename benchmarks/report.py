"""Writing one benchmark's part of a shared results page without touching the other parts.

A part sits between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` lines; writing it again
replaces it in place, and a new part goes at the end. The scripts run as ``python
benchmarks/<script>.py``, so this module is importable as ``report``.
"""

from pathlib import Path


def write_section(path, name: str, text: str, title: str = "") -> None:
    """Put ``text`` as the part ``name`` of the page at ``path`` (``title`` heads a new page)."""
    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    page = path.read_text() if path.exists() else (f"{title}\n" if title else "")
    if begin in page and end in page:
        before, rest = page.split(begin, 1)
        page = before + block + rest.split(end, 1)[1]
    else:
        page = page.rstrip("\n") + ("\n\n" if page.strip() else "") + block + "\n"
    path.write_text(page)
