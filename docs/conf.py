"""Sphinx configuration of attnviz's documentation site (``make docs``).

Why Sphinx: the anchors are captum's and torchcam's Sphinx sites, and everything this site
needs is a mature Sphinx extension that works offline: autodoc reads the public API's
docstrings, a small directive (``_ext/attnviz_docs.py``) renders the CLI reference from
attnviz's own argparse parsers (sphinx-argparse 0.6 fails on Sphinx 9 with these help texts),
sphinx-gallery runs every gallery script on the bundled models and scrapes its figures (and
the query viewer's ``_repr_html_``), myst-parser keeps the pages Markdown (the user guides
moved out of README.md unchanged, BENCHMARKS.md and TESTING.md included, not copied) and
myst-nb renders the notebooks from their committed outputs (execution off: the tests
execute them and compare). Furo is a theme without any CDN asset, so a built page loads no
file from the network. MkDocs-Material with mkdocstrings would need a second toolchain for
the command-line reference and the gallery.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a model hub: bundled models only
torch.set_num_threads(1)

from attnviz import __version__  # noqa: E402

project = "attnviz"
author = "the attnviz authors"
copyright = "attnviz authors, Apache-2.0"
release = version = __version__

extensions = [
    "myst_nb",  # Markdown pages (myst-parser) and the notebooks (committed outputs)
    "sphinx.ext.autodoc",
    "sphinx_gallery.gen_gallery",
    "attnviz_docs",
]

exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "gallery_src/*.py",  # the scripts are rendered as gallery/ pages
    "gallery/*.ipynb",
    "gallery/*.py",
    "gallery/*.zip",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# Markdown
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# the notebooks: rendered from their committed outputs, never executed by the build
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # no require.js / widget manager from a CDN: the page stays offline
nb_merge_streams = True

# autodoc: the public API (attnviz.__all__), signatures with their type hints
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

sphinx_gallery_conf = {
    "examples_dirs": "gallery_src",
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "capture_repr": ("_repr_html_",),  # the query viewer embeds itself as raw HTML
    "download_all_examples": False,
    "write_computation_times": False,
    "show_memory": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "reset_modules": ("matplotlib", "seaborn"),
    "image_srcset": [],
    "matplotlib_animations": False,
}

html_theme = "furo"
html_title = f"attnviz {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False

# docstrings write the absolute value of z as |z|, which reStructuredText reads as a
# substitution: define it as itself
rst_prolog = r"""
.. |z| replace:: \|z\|
"""
