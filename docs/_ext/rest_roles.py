"""Griffe extension for the API pages: turn the reST roles of our docstrings into links.

The docstrings are written for readers of the source (``:func:`~tresnet.data.load_image```); on the site
each role becomes a code span that links to the object when the API pages document it, and stays plain
code when they do not (an "optional" cross-reference of mkdocs-autorefs, so nothing warns).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(?P<target>[^`]+)`")
TITLED = re.compile(r"(?P<title>.+?)\s*<(?P<path>[^>]+)>$")


def _resolve(obj: griffe.Object, path: str) -> str:
    """The full dotted path of ``path`` as seen from ``obj``'s scope; ``path`` itself when unknown."""
    if path.startswith("tresnet."):
        return path
    try:
        return obj.resolve(path)
    except (griffe.NameResolutionError, AttributeError, KeyError, ValueError):
        return path


def _link(obj: griffe.Object, match: re.Match) -> str:
    target = match["target"].strip()
    titled = TITLED.match(target)
    if titled:
        title, path = titled["title"], titled["path"]
    else:
        path = target.lstrip("~")
        title = path.rsplit(".", 1)[-1] if target.startswith("~") else path
    path = path.lstrip(".")
    return f'<autoref identifier="{_resolve(obj, path)}" optional><code>{title}</code></autoref>'


class RestRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring as an optional cross-reference."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(lambda match: _link(obj, match), obj.docstring.value)
