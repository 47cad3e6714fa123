"""What a listening tool shows without a live kernel: in a chapter executed headless by ``lib.book``
(``SPEECHBOOK_HEADLESS=1``) the cell's output is a message saying so, with the one call that opens the tool on
that run; the ``text/plain`` form of a live tool says the same, for viewers that cannot draw widgets."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .cards import esc
from .listing import system_name

HEADLESS_ENV = "SPEECHBOOK_HEADLESS"


def display_path(path: Path) -> str:
    """A run folder relative to the project root when it lies inside it (what a reader types)."""
    from ..config import PROJECT_ROOT

    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


class HeadlessNote:
    """The note and the display bundle of :class:`~lib.widgets.tool.ListeningTool` (a mixin: it uses the tool's
    ``run_dir``, ``table``, ``systems``, ``system_filter``, ``compare_filter`` and ``widget``)."""

    def open_call(self) -> str:
        """The one call that opens this tool on its run in a live kernel."""
        where = display_path(self.run_dir) if self.run_dir is not None else "<run folder>"

        def short(label: str) -> str:  # the bare system name where it names one menu entry, else the full label
            name = system_name(self.table, label)
            return name if sum(system_name(self.table, s) == name for s in self.systems) == 1 else label

        args = [repr(where), f"system={short(self.system_filter.value)!r}"]
        if self.compare_filter.value is not None:
            args.append(f"compare={short(self.compare_filter.value)!r}")
        return f"from lib.widgets import listening_tool\nlistening_tool({', '.join(args)})"

    def live_kernel_note(self) -> str:
        return ("The listening tool needs a live Python kernel: this output was saved without one (an executed "
                "copy of the chapter, or a viewer that cannot draw widgets). Open the chapter in JupyterLab "
                "(`make lab`) and run its cells, or run in any notebook of the project:\n\n" + self.open_call())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        note = self.live_kernel_note()
        if os.environ.get(HEADLESS_ENV) == "1":
            return {"text/plain": note,
                    "text/html": "<div style='border:1px solid #e0c36c;background:#fff8e1;padding:6px 10px'>"
                                 + esc(note.split("\n\n")[0]) + f"<pre>{esc(self.open_call())}</pre></div>"}
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict):
            data["text/plain"] = note
        return bundle
