"""Sphinx configuration of the lpc_geom documentation (``make docs``; strict: warnings are errors).

Sphinx reads the numpydoc docstrings through napoleon (numpy style) and the markdown pages through
myst-parser. Two local extensions generate pages at build time, so nothing in the API reference or the
results section is listed by hand: ``apipages`` writes one page per public module found by walking the
package, ``resultspages`` gathers every results fragment the benchmarks wrote into ``docs/results``.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the checkout's lpc_geom and benchmarks, not another installed copy

import lpc_geom  # noqa: E402

project = "lpc_geom"
copyright = "lpc_geom developers, MIT licence"
release = version = lpc_geom.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "apipages",
    "docstrings",
    "resultspages",
    "datapages",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# _generated/ablation_rows.md is included into a page, not a page of its own
exclude_patterns = ["_build", "**/.*", "_generated/ablation_rows.md"]
templates_path = []

html_theme = "furo"
html_title = f"lpc_geom {release}"
html_static_path = []

# numpy-style docstrings; attributes as fields of their class, so that an attribute documented both in a
# class's "Attributes" section and by autodoc is described once
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": True}
autosummary_generate = False  # the API pages come from apipages, which never imports lpc_geom.__main__

myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3
# a results fragment starts at a level-2 heading (it is also included into larger pages)
suppress_warnings = ["myst.header"]
