"""Clip tags (fine / ambiguous / mislabeled): one CSV per run folder, written at every change."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io

TAGS = ("fine", "ambiguous", "mislabeled")
TAGS_FILE = "listening_tags.csv"


class TagStore:
    """Clip tags (``fine``, ``ambiguous``, ``mislabeled``) kept in ``path`` (``<run>/listening_tags.csv``:
    ``clip_id, tag, system, label, tagged_at``), written atomically at every change. A tag belongs to
    the clip (its label or audio), not to a system; ``system`` records which system was being listened to.
    ``path=None`` keeps the tags in memory only."""

    COLUMNS = ["clip_id", "tag", "system", "label", "tagged_at"]

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            t = pd.read_csv(self.path, dtype=str, keep_default_na=False)
            missing = [c for c in ("clip_id", "tag") if c not in t.columns]
            if missing:
                raise ValueError(f"{self.path}: no column(s) {missing}; a tags file has {', '.join(self.COLUMNS)}. "
                                 "Move it away to start a new one.")
            bad = sorted(set(t["tag"]) - set(TAGS))
            if bad:
                raise ValueError(f"{self.path}: unknown tag(s) {bad}; valid: {', '.join(TAGS)}")
            self.rows = {r["clip_id"]: dict(r) for r in t.to_dict("records")}

    def get(self, clip_id: str) -> str:
        return self.rows.get(str(clip_id), {}).get("tag", "")

    def as_dict(self) -> dict[str, str]:
        return {k: v["tag"] for k, v in self.rows.items()}

    def set(self, clip_id: str, tag: str, system: str = "", label: str = "") -> bool:
        """Tag a clip (``""`` removes its tag); returns whether anything changed (then the file is written)."""
        if tag not in ("",) + TAGS:
            raise ValueError(f"tag {tag!r}; valid: {', '.join(TAGS)} (or '' to clear)")
        clip_id = str(clip_id)
        if self.get(clip_id) == tag:
            return False
        if tag:
            self.rows[clip_id] = {"clip_id": clip_id, "tag": tag, "system": system, "label": label,
                                  "tagged_at": _dt.datetime.now().isoformat(timespec="seconds")}
        else:
            self.rows.pop(clip_id, None)
        self.save()
        return True

    def save(self) -> None:
        if self.path is None:
            return
        io.write_csv(self.path, pd.DataFrame(list(self.rows.values()), columns=self.COLUMNS))

