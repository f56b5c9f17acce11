"""Griffe extension: the reStructuredText bits of fop_modules' docstrings, as Markdown.

The docstrings are Google style (mkdocstrings parses their sections) but, like TorchRL's, write
inline code as ``x``, cross-references as :class:`~pkg.Name` and key tables as RST simple
tables. mkdocstrings renders docstring text as Markdown, so this extension rewrites those three
forms before rendering; the source files stay as they are (they also read well in ``help()``).

- ``x`` -> `x`
- :class:`~fop_modules.FOPLoss` -> a link to that object's API entry (mkdocstrings' autorefs);
  a target outside fop_modules (torchrl, tensordict) -> plain code, since the build is offline
  and has no inventory of those projects.
- ``[*B, N]`` outside code -> ``[\\*B, N]``, so that two shapes in a sentence are not read as
  emphasis.
- a simple table (rows between lines of ``=====  =====``, cells split on two or more spaces)
  -> a Markdown table.

Enabled in mkdocs.yml under the python handler's ``extensions``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

DOUBLE_BACKTICKS = re.compile(r"``(.+?)``")
ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|obj):`(~?)([^`<]+?)`")
LINK = re.compile(r"`([^`<]+?) <(https?://[^>]+)>`_")
BORDER = re.compile(r"^\s*=+(?:\s{2,}=+)+\s*$")  # ===  ====  =====
CELL_SEP = re.compile(r"\s{2,}")
OWN_PACKAGE = "fop_modules."
CODE_OR_STAR_SHAPE = re.compile(r"(`[^`]*`)|\[\*")  # a code span, or "[*" of a shape like [*B, N]


def _role(match: re.Match) -> str:
    short, target = match.group(1) == "~", match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    if target.startswith(OWN_PACKAGE):
        return f"[`{shown}`][{target}]"
    return f"`{shown}`"


def _cells(line: str, indent: int) -> list[str]:
    return [cell.replace("|", r"\|") for cell in CELL_SEP.split(line[indent:].strip())]


def _tables(text: str) -> str:
    """Rewrites every RST simple table (top border, header, border, rows, bottom border)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if not BORDER.match(lines[i]) or i + 2 >= len(lines) or not BORDER.match(lines[i + 2]):
            out.append(lines[i])
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        header = _cells(lines[i + 1], indent)
        rows: list[list[str]] = []
        i += 3
        while i < len(lines) and not BORDER.match(lines[i]):
            if lines[i].strip():
                cells = _cells(lines[i], indent)
                if rows and lines[i][indent:indent + 1] == " ":  # blank first column: continuation
                    rows[-1][-1] += " " + " ".join(cells)
                else:
                    rows.append(cells + [""] * (len(header) - len(cells)))
            i += 1
        i += 1  # the bottom border
        pad = " " * indent
        out.append(pad + "| " + " | ".join(header) + " |")
        out.append(pad + "|" + "---|" * len(header))
        out += [pad + "| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """The three rewrites, tables first (their borders would not survive the others).

    Examples:
        >>> rst_to_markdown("``x`` and :class:`~fop_modules.FOPLoss` and :func:`torch.cat`")
        '`x` and [`FOPLoss`][fop_modules.FOPLoss] and `torch.cat`'
        >>> print(rst_to_markdown("shape [*B, N] and ``[*B, 1]``"))
        shape [\\*B, N] and `[*B, 1]`
        >>> print(rst_to_markdown("==  ==\\nkey  meaning\\n==  ==\\n``a``  b | c\\n==  =="))
        | key | meaning |
        |---|---|
        | `a` | b \\| c |
    """
    text = _tables(text)
    text = LINK.sub(r"[\1](\2)", text)
    text = ROLE.sub(_role, text)
    text = DOUBLE_BACKTICKS.sub(r"`\1`", text)
    return CODE_OR_STAR_SHAPE.sub(lambda m: m.group(1) or r"[\*", text)


class RstToMarkdown(griffe.Extension):
    """Rewrites each docstring once, as griffe loads the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
