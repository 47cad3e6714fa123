"""Fake chapters for the runner's tests: a title, a parameters cell and one code cell."""
from __future__ import annotations

from pathlib import Path

import nbformat

PARAMS = 'profile = "cpu"\nrun_dir = None\nseed = None\n'


def fake_chapter(folder: Path, name: str, body: str, params: str = PARAMS) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), cell, nbformat.v4.new_code_cell(body)]
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path
