"""Sphinx configuration of refvit's documentation site (built by docs/build.sh into docs/_build/html/).

Stack: Sphinx + myst-nb (Markdown pages and the stored tutorial notebooks, rendered from their saved outputs, never
re-executed) + pydata-sphinx-theme (the theme numpy, scipy and Dask use) + sphinx-argparse (the CLI reference, read
from refvit.cli's parser) + autodoc (the API reference, from the public names' docstrings). The site is offline: no
page loads anything from another host (tests/test_docs.py checks it in a real browser).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

import refvit  # noqa: E402

# The tutorial notebooks are copied into docs/tutorials/ (git-ignored) at every build, not symlinked: MyST resolves a
# link through a symlink to the file's real path, outside this folder, so links to a symlinked notebook break; copies
# also work on checkouts without symlinks. tutorials/ stays the single source: docs/tutorials/index.md includes
# tutorials/README.md (the students' page), whose links to `NN_name.ipynb` then resolve to the copies beside it.
TUTORIALS = ROOT / "tutorials"
COPIED = Path(__file__).resolve().parent / "tutorials"


def copy_tutorials() -> None:
    for old in COPIED.glob("[0-9][0-9]_*.ipynb"):
        old.unlink()
    for notebook in sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb")):
        (COPIED / notebook.name).write_bytes(notebook.read_bytes())
    (COPIED / "about.md").unlink(missing_ok=True)  # a copy of the README older builds wrote: in no toctree now


copy_tutorials()

project = "refvit"
author = "the refvit authors"
copyright = "the refvit authors"
release = version = getattr(refvit, "__version__", "0.1.0")

extensions = [
    "myst_nb",                # Markdown (MyST) pages and .ipynb notebooks
    "sphinx.ext.autodoc",     # API reference from docstrings
    "sphinxarg.ext",          # CLI reference from the argparse parser
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# Notebooks: render the outputs stored by tutorials/run.py; never execute at build time.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4  # [text](page.md#a-heading) links to headings, checked at build time

# Every reference must resolve (build.sh runs sphinx-build -n -W).
nitpicky = True
# ... except the classes named in type hints (numpy, PIL, os, refvit internals): without intersphinx (the site builds
# offline) they have no page to link to; they are shown as plain names.
nitpick_ignore_regex = [(r"py:class", r".*")]

autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"

html_theme = "pydata_sphinx_theme"
html_title = "refvit"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_favicon = "_static/refvit.svg"  # linked from every page, so the browser asks for no /favicon.ico
html_logo = "_static/refvit.svg"
html_context = {"default_mode": "auto"}  # light/dark follows the system; set, so the theme logs no "invalid mode"
html_theme_options = {
    # Offline: no external links in the header that would need icons from a CDN, no analytics, no version
    # switcher (it fetches a JSON file), no announcement banner fetched from a URL.
    "icon_links": [],
    "navbar_end": ["theme-switcher", "navbar-icon-links"],
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc"],
}
# Pages without sub-pages get no left sidebar (it would be an empty "Section Navigation"): more room for code.
html_sidebars = {page: [] for page in ("index", "porting", "cli", "api", "speed", "security", "golden", "quirks",
                                       "DESIGN", "contributing", "search", "genindex", "py-modindex")}
smartquotes_action = "qe"  # quotes and ellipses only: `--help` stays two hyphens, not an en dash
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None


# refvit's docstrings are written in Markdown (`code`, *emphasis*, - lists), not reStructuredText: autodoc hands each
# one to MyST, as the pages are parsed, so they render as written and a docstring's *args never breaks the build.
from docutils.utils import new_document  # noqa: E402
from myst_parser.parsers.sphinx_ import MystParser  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402


class MarkdownDocstring(SphinxDirective):
    has_content = True

    def run(self):
        source, _ = self.get_source_info()
        document = new_document(source or "docstring", self.state.document.settings)
        document.reporter = self.state.document.reporter
        MystParser().parse("\n".join(self.content), document)
        return list(document.children)


def markdown_docstring(app, what, name, obj, options, lines):
    if lines:
        lines[:] = [".. markdown-docstring::", ""] + [("   " + line) if line.strip() else "" for line in lines] + [""]


def setup(app):
    app.add_directive("markdown-docstring", MarkdownDocstring)
    app.connect("autodoc-process-docstring", markdown_docstring)
