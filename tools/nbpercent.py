"""Convert between clean Jupyter notebooks and a plain-text "percent" format for editing.

A percent file separates cells with lines `# %%` (code) and `# %% [markdown]` (markdown).
Markdown cells keep their text with a `# ` prefix on each line. A code cell written as
`# %% tags=["parameters"]` gets that cell tag, which papermill reads.

Usage:
    python tools/nbpercent.py to-nb SOURCE.py TARGET.ipynb
    python tools/nbpercent.py to-py SOURCE.ipynb TARGET.py
"""
import json
import re
import sys

import nbformat

CELL_MARKER = re.compile(r"^# %%(?P<markdown> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def percent_to_notebook(text: str) -> nbformat.NotebookNode:
    "Parse percent-format text into a notebook with no outputs."
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}
    }
    cells, current, kind, tags = [], [], None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(current).strip("\n")
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.split("\n"))
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
            if tags:
                cell.metadata["tags"] = tags
        cells.append(cell)

    for line in text.split("\n"):
        match = CELL_MARKER.match(line)
        if match:
            flush()
            kind = "markdown" if match.group("markdown") else "code"
            tags = json.loads(match.group("tags")) if match.group("tags") else []
            current = []
        else:
            current.append(line)
    flush()
    notebook.cells = cells
    return notebook


def notebook_to_percent(notebook: nbformat.NotebookNode) -> str:
    "Render a notebook as percent-format text, dropping outputs."
    parts = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            body = "\n".join(f"# {line}" if line else "#" for line in cell.source.split("\n"))
            parts.append(f"# %% [markdown]\n{body}")
        else:
            tags = cell.metadata.get("tags", [])
            header = f"# %% tags={json.dumps(tags)}" if tags else "# %%"
            parts.append(f"{header}\n{cell.source}")
    return "\n\n".join(parts) + "\n"


def main(argv):
    if len(argv) != 4 or argv[1] not in ("to-nb", "to-py"):
        raise SystemExit(__doc__)
    command, source, target = argv[1:]
    if command == "to-nb":
        with open(source, encoding="utf-8") as handle:
            notebook = percent_to_notebook(handle.read())
        nbformat.write(notebook, target)
    else:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(notebook_to_percent(nbformat.read(source, as_version=4)))


if __name__ == "__main__":
    main(sys.argv)
