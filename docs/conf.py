"""Sphinx configuration of the jepa_rate documentation.

Built offline with ``sphinx-build -W --keep-going -b html docs docs/_build/html``. Set
``JEPA_RATE_DOCS_INTERSPHINX=1`` to link type names to the PyTorch and Python docs (needs network).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# A source checkout builds without installing the package first.
sys.path.insert(0, str(ROOT / "src"))

import jepa_rate  # noqa: E402

project = "jepa_rate"
author = "jepa_rate developers"
copyright = "jepa_rate developers, MIT license"
version = release = jepa_rate.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # Serves MathJax 3 from the built site (_static/mathjax/) instead of a CDN: formulas render offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "results_table.md", "results/step2/*.md"]
templates_path = ["_templates"]

# MyST: $...$ / $$...$$ math and amsmath environments; headings up to level 3 get anchors for #links.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# autodoc / autosummary: stubs are generated at build time into docs/api/generated/ (not committed).
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = False

# napoleon: Google style only. ``:ivar:`` fields for "Attributes:" keep NamedTuple fields from being described
# twice (once by napoleon, once by autodoc).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_custom_sections = ["Shape"]

# Intersphinx needs the network, so it is off unless asked for.
if os.environ.get("JEPA_RATE_DOCS_INTERSPHINX"):
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
    }

html_theme = "furo"
html_title = f"jepa_rate {release}"
html_static_path = ["_static"]
# Wide tables, code blocks and display formulas scroll inside the page instead of running past its edge.
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": True,
    "top_of_page_buttons": [],
}
html_show_sourcelink = False

# sphinx-copybutton: a block with ">>> " / "$ " prompts copies only its input lines, without prompts.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# The public names exported by the package root are documented once, in their subpackage
# (``jepa_rate.losses.coding_rate``); references written as ``jepa_rate.coding_rate`` resolve there.
_SUBPACKAGES = ("losses", "modules", "models", "metrics", "schedules")


def _canonical_name(target: str) -> str | None:
    prefix = "jepa_rate."
    if not target.startswith(prefix):
        return None
    head, _, rest = target[len(prefix) :].partition(".")
    for sub in _SUBPACKAGES:
        module = getattr(jepa_rate, sub)
        if head in getattr(module, "__all__", ()):
            return f"{prefix}{sub}.{head}" + (f".{rest}" if rest else "")
    return None


def _resolve_root_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    canonical = _canonical_name(node.get("reftarget", ""))
    if canonical is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode)


def _skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    # NamedTuple fields are described by the class's "Attributes:" section; autodoc would add a second,
    # content-free entry ("Alias for field number 0") for each. ``extra_repr`` would show nn.Module's
    # inherited docstring, which says nothing about this library.
    doc = getattr(obj, "__doc__", None) or ""
    if doc.startswith("Alias for field number") or name == "extra_repr":
        return True
    return None


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_root_alias)
    app.connect("autodoc-skip-member", _skip_member)
