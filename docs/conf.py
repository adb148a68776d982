"""Sphinx configuration for natsync's documentation (``make docs`` builds it)."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

sys.path.insert(0, os.path.abspath(".."))

from sphinx.util.nodes import make_refnode  # noqa: E402

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

# Every cross-reference must resolve (``make docs NITPICKY=0`` turns the check off, for
# a look at a site whose docstrings are still being written).  Short names of natsync
# objects resolve through _resolve_short_names below.
nitpicky = os.environ.get("NITPICKY", "1") != "0"
nitpick_ignore_regex = [
    # private names in signatures (natsync._web.Worker, ...) and the stdlib's private Future
    (r"py:.*", r"(.*\.)?_[A-Za-z]\w*(\..*)?"),
    (r"py:class", r"concurrent\.futures\._base\.Future"),
    # names that autodoc prints from annotations but that have no page to link to
    (r"py:class", r"ResponseReturnValue|list\[str\]"),
    # Django and Flask types: no inventory of their docs is kept here (offline build)
    (r"py:class", r"django\..*|flask\..*"),
    # SQLAlchemy types in natsync.sqlalchemy (no inventory kept either; Session is the
    # name its annotations use for sqlalchemy.orm.Session)
    (r"py:class", r"sqlalchemy\..*|Session"),
    # Docstrings of modules still being written in other branches when the site was made
    # (js, micro, dispatch); remove each line once its docstring is fixed.
    (r"py:meth", r"(KeyWatcher\.)?(updates|stop)|Service\.add_(endpoint|group)"),
    (r"py:attr", r"stopped"),
    (r"py:data", r"MAX_QUEUED_ERRORS"),
    (r"py:class", r"How long (a value is|objects are) kept|in seconds|The size limit|the bucket|-1"),
    (r"py:class", r"A request handler"),
]


_SECTION_WITH_NOTE = re.compile(r"^(\s*)(Raises|Returns|Yields) \((.*)\):\s*$")


def _napoleon_sections(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Let ``Raises (from the iteration):`` be read as napoleon's ``Raises:`` section
    (the note goes into the text before it)."""
    for i, line in enumerate(lines):
        m = _SECTION_WITH_NOTE.match(line)
        if m:
            lines[i] = f"{m.group(1)}{m.group(2)}:"
            lines.insert(i, "")
            lines.insert(i, f"{m.group(1)}{m.group(2)} ({m.group(3)}):")
            break


_PREFERRED = ("natsync.errors.", "natsync.js.errors.", "natsync.js.api.")


def _resolve_short_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a Python cross-reference that names a natsync object by a shorter name.

    Docstrings say ``natsync.TimeoutError`` (re-exported; documented in
    ``natsync.errors``), ``BadHeaderError`` or ``KeyWatcher.updates``.  The target is
    looked up in the current class and module first, then as a unique suffix of a
    documented natsync name (the error modules win a tie).
    """
    if node.get("refdomain") != "py":
        return None
    target: str = node.get("reftarget", "")
    if not target or target.startswith("_"):
        return None
    objects = env.get_domain("py").objects
    module = node.get("py:module") or ""
    cls = node.get("py:class") or ""
    exact = [f"{module}.{cls}.{target}" if cls else "", f"{module}.{target}" if module else ""]
    found = next((name for name in exact if name and name in objects), None)
    if found is None:
        short = target[len("natsync.") :] if target.startswith("natsync.") else target
        suffix = "." + short
        matches = [name for name in objects if name.startswith("natsync.") and name.endswith(suffix)]
        matches = [m for m in matches if not objects[m].aliased] or matches
        if len(matches) > 1:
            preferred = [m for m in matches if m.startswith(_PREFERRED)]
            matches = preferred if len(preferred) == 1 else matches
        if len(matches) != 1:
            return None
        found = matches[0]
    entry = objects[found]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, found)


def setup(app: Any) -> dict[str, bool]:
    app.connect("autodoc-process-docstring", _napoleon_sections, priority=100)
    app.connect("missing-reference", _resolve_short_names)
    return {"parallel_read_safe": True}
