"""The chapters: which notebooks there are, in which order the book runs them, their declared parameters, and
cleaning a notebook for the repository (outputs stripped, the project kernel set)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .. import io
from ..config import PROJECT_ROOT, ConfigError

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "speechbook"
SWEEP_STEP = "sweep"
RUN_LAST = ("06_statistics",)


def list_chapters(selected: Iterable[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The chapters in reading order; ``selected`` picks some by number or name ("01", "03_training")."""
    found = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not selected:
        return found
    chosen = []
    for want in selected:
        matches = [p for p in found if p.stem == want or p.stem.split("_")[0] == want or p.name == want]
        if not matches:
            raise ConfigError(f"no chapter {want!r}; chapters: {', '.join(p.stem for p in found)}")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen)


def chapter_parameters(notebook: Path) -> dict[str, Any]:
    """The names and defaults declared in a chapter's cell tagged ``parameters``."""
    import nbformat
    from papermill.translators import PythonTranslator  # the parser behind pm.inspect_notebook

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return {p.name: p.default for p in PythonTranslator.inspect(cell)}
    return {}


def book_steps(chapters: list[Path], include_sweep: bool) -> list[Path | str]:
    """Chapters in reading order, except that the statistics chapter runs last (it reads every system the
    others produced, prompt optimisation's included), and the seed sweep runs just before it. Chapter
    09_recordings (systems over whole recordings) runs after 07, before the sweep: it needs only the bank
    and the systems of chapters 01-03 (its segment metrics are its own; chapter 06 reads clip predictions)."""
    firsts = [c for c in chapters if c.stem not in RUN_LAST]
    lasts = [c for c in chapters if c.stem in RUN_LAST]
    return [*firsts, *([SWEEP_STEP] if include_sweep else []), *lasts]


def kernel_name() -> str:
    """The project's kernel if registered (make installs it inside the venv), else this interpreter's."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
            return KERNEL_NAME
    except Exception:  # noqa: BLE001 - any failure here just means "use the default kernel"
        pass
    return "python3"


def clean_notebook(path: str | Path) -> bool:
    """Strip outputs and execution counts and set the project kernel; True if the file changed."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "speechbook (.venv)", "language": "python"}
    nb.metadata.pop("papermill", None)
    after = nbformat.writes(nb)
    if after != before:
        io.write_text(path, after)
        return True
    return False
