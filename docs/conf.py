"""Sphinx configuration for natsync's documentation (``make docs`` builds it)."""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.abspath(".."))

import natsync  # noqa: E402

project = "natsync"
author = "the natsync authors"
copyright = "2026, the natsync authors"
release = natsync.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

# The pages are also executed by tests/test_docs.py (README.rst and docs/*.rst).
exclude_patterns = ["_build"]
root_doc = "index"
templates_path: list[str] = []

html_theme = "furo"
html_title = f"natsync {release}"

# The build works offline: Python's inventory (objects.inv of the Python 3.11 docs, from
# Debian's python3-doc) is kept in _inv/; links still point at docs.python.org.
intersphinx_mapping = {"python": ("https://docs.python.org/3", "_inv/python3.inv")}

autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Not nitpicky yet: the docstrings of the modules being written in parallel (client, js,
# micro, web) still name exceptions and types by short names that do not resolve; the
# integrator turns this on once they are merged (make docs NITPICKY=1 shows the list).
nitpicky = bool(os.environ.get("NITPICKY"))
# Names that cannot be linked: private helper types that appear in signatures, and
# type aliases that autodoc prints by name.
nitpick_ignore_regex = [
    (r"py:.*", r"(.*\.)?_[A-Za-z]\w*(\..*)?"),  # private names (natsync._web.Worker, ...)
    (r"py:class", r"concurrent\.futures\._base\.Future"),
]


_SECTION_WITH_NOTE = re.compile(r"^(\s*)(Raises|Returns|Yields) \((.*)\):\s*$")


def _napoleon_sections(app: object, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    """Let ``Raises (from the iteration):`` be read as napoleon's ``Raises:`` section
    (the note goes into the text before it)."""
    for i, line in enumerate(lines):
        m = _SECTION_WITH_NOTE.match(line)
        if m:
            lines[i] = f"{m.group(1)}{m.group(2)}:"
            lines.insert(i, "")
            lines.insert(i, f"{m.group(1)}{m.group(2)} ({m.group(3)}):")
            break


def setup(app: object) -> dict[str, bool]:
    app.connect("autodoc-process-docstring", _napoleon_sections, priority=100)  # type: ignore[attr-defined]
    return {"parallel_read_safe": True}
