"""The listening tool's widget: the filters, the listing and its pages, the keyboard, tags and export.
The cards it shows are drawn by :class:`~lib.widgets.cards.ClipCards`; what it lists is the pure function
:func:`~lib.widgets.listing.filter_clips` of its widgets' values."""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from .. import io
from . import media
from .cards import ClipCards, esc
from .headless import HeadlessNote
from .keyboard import KEY_ACTIONS, keyboard_widget
from .listing import (ALL, CHOICE_AXES, CHOICE_NAMES, COMPARE_MODES, DEFAULT_SORT, NO_MATCH, SORTS, TAG_FILTERS,
                      axis_text, categories_of, discordant_counts, filter_clips, join_bank, natural_key, system_name)
from .tags import TAGS_FILE, TagStore

EXPORT_DIR = "listening_exports"


class ListeningTool(ClipCards, HeadlessNote):
    """Widgets to browse, hear, compare and tag the clips of one or more systems.

    ``predictions``: the predictions table (DESIGN.md, table 3), one or more systems.
    ``bank``: the bank manifest table (joined on ``clip_id`` for its axes and ``path``); may be None
    when ``predictions`` already carries those columns. ``manifest``: the bank's manifest.csv path
    (audio paths are relative to its folder). ``normalization``: how clips are leveled for playback
    and spectrograms (none | peak | rms; the run's own setting is the honest default). ``smoke``:
    label what is shown as a smoke result. ``system``/``compare``: the system shown first and the one
    it is compared with. ``run_dir``: where tags and exports are written (None: tags in memory only,
    no export). ``loader`` replaces ``lib.data.load_clip`` (same call: ``loader(row, normalization,
    root)``); ``parts_loader(row)`` replaces :class:`lib.data.ClipParts` for the sources.
    """

    def __init__(
        self,
        predictions: pd.DataFrame,
        bank: pd.DataFrame | None = None,
        manifest: str | Path | None = None,
        normalization: str = "none",
        smoke: bool = False,
        *,
        page_size: int = 5,
        system: str | None = None,
        compare: str | None = None,
        title: str = "Listening tool",
        loader: Callable[..., np.ndarray] | None = None,
        parts_loader: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
        run_dir: str | Path | None = None,
        model: str | None = None,
    ) -> None:
        import ipywidgets as w

        if predictions is None or not len(predictions):
            raise ValueError("the predictions table is empty: nothing to listen to")
        self.table = join_bank(predictions, bank)
        self.manifest = Path(manifest) if manifest is not None else None
        self.smoke = bool(smoke)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tags = TagStore(self.run_dir / TAGS_FILE if self.run_dir is not None else None)
        self._loader = loader
        self._parts_loader = parts_loader or media.default_parts_loader(self.manifest)
        self._cache: dict[tuple[str, ...], Any] = {}
        self._tag_buttons: dict[str, Any] = {}
        self._parts_boxes: dict[str, Any] = {}
        self._busy = False
        self.page = 0
        self.selected = 0
        self.last_export: Path | None = None

        systems = sorted(self.table["system_label"].unique())
        self.systems = systems
        system = self._resolve_system(system, systems) if system is not None else systems[0]
        compare = self._resolve_system(compare, systems) if compare is not None else None
        self.system_filter = w.Dropdown(options=systems, value=system, description="system A")
        self.compare_filter = w.Dropdown(options=[("(none)", None)] + [(s, s) for s in systems], value=compare,
                                         description="compare with B", style={"description_width": "initial"})
        self.compare_mode = w.Dropdown(options=list(COMPARE_MODES.items()), value="a_wrong_b_right",
                                       description="list", disabled=compare is None)
        self.class_filter = w.Dropdown(
            options=[("all", ALL), ("speech (true class)", "speech"), ("nonspeech (true class)", "nonspeech")],
            value=ALL,
            description="true class",
        )
        self.sort = w.Dropdown(options=list(SORTS), value=DEFAULT_SORT, description="sort")
        self.errors_only = w.Checkbox(value=True, description="misclassified only", indent=False)
        norms = ["none", "peak", "rms"]
        self.normalization = w.Dropdown(
            options=norms if normalization in norms else norms + [normalization],
            value=normalization,
            description="playback",
            tooltip="level normalization applied when a clip is loaded",
        )
        cats = categories_of(self.table, ALL)
        self.category_filter = w.SelectMultiple(options=cats, value=(), rows=min(6, max(2, len(cats))),
                                                description="category")
        self.choice_filters: dict[str, Any] = {}
        for axis in CHOICE_AXES:
            if axis in self.table.columns:
                vals = sorted({axis_text(v) for v in self.table[axis]}, key=natural_key)
                if len(vals) >= 2:
                    self.choice_filters[axis] = w.SelectMultiple(
                        options=vals, value=(), rows=min(4, len(vals)), description=CHOICE_NAMES.get(axis, axis)
                    )
        self.duration_filter = self._level_slider(w, "duration_ms", "duration", "ms")
        self.snr_filter = self._level_slider(w, "snr_db", "SNR", "dB")
        self.tag_filter = w.Dropdown(options=list(TAG_FILTERS.items()), value=None, description="tag")
        self.page_size = w.Dropdown(options=[3, 5, 10, 20, 50], value=page_size if page_size in (3, 5, 10, 20, 50) else 5,
                                    description="per page")
        self.prev_button = w.Button(description="◀ previous page", layout=w.Layout(width="140px"))
        self.next_button = w.Button(description="next page ▶", layout=w.Layout(width="140px"))
        self.reset_button = w.Button(description="reset filters", icon="undo", layout=w.Layout(width="130px"),
                                     tooltip="every filter back to its default (the systems stay)")
        self.export_button = w.Button(description="export list", icon="download", layout=w.Layout(width="120px"),
                                      disabled=self.run_dir is None,
                                      tooltip="write the listed clips (all pages) to a CSV in the run folder"
                                      if self.run_dir is not None else "no run folder: nothing to export to")
        self.status = w.HTML()
        self.status.add_class("speechbook-status")
        self.summary = w.HTML()
        self.summary.add_class("speechbook-summary")
        self.message = w.HTML()
        self.message.add_class("speechbook-message")
        self.clips_box = w.VBox()
        self.empty_message = w.HTML(
            f"<div style='padding:12px;color:#a00;font-size:14px'><b>{NO_MATCH}</b> Widen the filters, pick "
            "another system, untick <i>misclassified only</i>, or press <i>reset filters</i>.</div>"
        )
        self.empty_message.add_class("speechbook-empty")
        self.clips_box.add_class("speechbook-clips")
        self.keyboard = keyboard_widget()

        for ctl in self._filter_controls():
            ctl.observe(self._on_filter, names="value")
        self.class_filter.observe(self._on_class, names="value")
        self.compare_filter.observe(self._on_compare, names="value")
        self.normalization.observe(self._on_view, names="value")
        self.page_size.observe(self._on_filter, names="value")
        self.prev_button.on_click(lambda _: self.go_to_page(self.page - 1))
        self.next_button.on_click(lambda _: self.go_to_page(self.page + 1))
        self.reset_button.on_click(lambda _: self.reset())
        self.export_button.on_click(lambda _: self.export())
        if self.keyboard is not None:
            self.keyboard.on_msg(lambda _w, content, _b: self.handle_key(str(content.get("action", ""))))

        banner = f"<h3 style='margin:4px 0'>{esc(title)}</h3>"
        if model:
            banner += f"<div style='color:#555;font-size:12px'>model: {esc(model)}</div>"
        if self.smoke:
            banner += (
                "<div style='background:#fff3cd;border:1px solid #e0c36c;padding:4px 8px;margin:4px 0'>"
                "<b>SMOKE RESULT</b>: a small model and bank. These clips show the machinery, not what "
                "Qwen2-Audio-7B gets wrong.</div>"
            )
        help_text = w.HTML(
            "<small>Empty category / axis selections mean <i>all</i>; ctrl/shift-click selects several. "
            "Confidence = probability the system gave to the class it chose. Tags are saved to "
            + (f"<code>{esc(self.run_dir / TAGS_FILE)}</code>" if self.run_dir is not None else "memory only (no run folder)")
            + ".</small>"
        )
        choice_row = [self.category_filter, *self.choice_filters.values()]
        sliders = [s for s in (self.duration_filter, self.snr_filter) if s is not None]
        self.widget = w.VBox(
            [
                w.HTML(banner),
                w.HBox([self.system_filter, self.compare_filter, self.compare_mode], layout=w.Layout(flex_flow="row wrap")),
                w.HBox([self.class_filter, self.errors_only, self.tag_filter], layout=w.Layout(flex_flow="row wrap")),
                w.HBox([self.sort, self.normalization], layout=w.Layout(flex_flow="row wrap")),
                w.HBox(choice_row, layout=w.Layout(flex_flow="row wrap")),
                w.HBox(sliders, layout=w.Layout(flex_flow="row wrap")),
                help_text,
                *([self.keyboard] if self.keyboard is not None else []),
                w.HBox([self.prev_button, self.next_button, self.page_size, self.reset_button, self.export_button],
                       layout=w.Layout(align_items="center", flex_flow="row wrap")),
                self.summary,
                self.status,
                self.message,
                self.clips_box,
            ]
        )
        self.widget.add_class("speechbook-listening-tool")
        self.refresh()

    # -- construction helpers -----------------------------------------------------------------
    def _resolve_system(self, name: str, systems: list[str]) -> str:
        """A menu label from a label or a bare system name (its first menu entry)."""
        if name in systems:
            return name
        by_name = [s for s in systems if system_name(self.table, s) == name]
        if not by_name:
            raise ValueError(f"system {name!r} is not in the predictions; they hold: {', '.join(systems)}")
        return by_name[0]

    def _level_slider(self, w: Any, column: str, description: str, unit: str) -> Any:
        """A range slider over the levels the bank really has (discrete steps, no values in between)."""
        if column not in self.table.columns:
            return None
        v = pd.to_numeric(self.table[column], errors="coerce").astype(float)
        levels = sorted(set(v[~np.isnan(v)].tolist()))
        if not levels:
            return None
        options = [("clean" if np.isinf(x) and x > 0 else f"{x:g} {unit}", x) for x in levels]
        slider = w.SelectionRangeSlider(options=options, index=(0, len(options) - 1), description=description,
                                        continuous_update=False, disabled=len(options) < 2)
        slider.style.description_width = "initial"
        slider.layout.width = "420px"
        slider.layout.margin = "2px 32px 2px 0"
        return slider

    def _filter_controls(self) -> list[Any]:
        ctls = [self.system_filter, self.compare_mode, self.class_filter, self.sort, self.errors_only,
                self.category_filter, self.tag_filter, *self.choice_filters.values()]
        return ctls + [s for s in (self.duration_filter, self.snr_filter) if s is not None]

    @staticmethod
    def _slider_range(slider: Any) -> tuple[float, float] | None:
        """The slider's range, or None when it spans every level (then it filters nothing)."""
        if slider is None:
            return None
        lo, hi = slider.value
        levels = [v for _, v in slider.options]
        if lo <= levels[0] and hi >= levels[-1]:
            return None
        return (lo, hi)

    # -- the listing ---------------------------------------------------------------------------
    def filter_values(self) -> dict[str, Any]:
        """The widgets' current values, as :func:`filter_clips` keyword arguments."""
        snr_levels = [v for _, v in self.snr_filter.options] if self.snr_filter is not None else None
        return dict(
            system=self.system_filter.value,
            label=self.class_filter.value,
            categories=tuple(self.category_filter.value),
            duration_ms=self._slider_range(self.duration_filter),
            snr_db=self._slider_range(self.snr_filter),
            choices={axis: tuple(sel.value) for axis, sel in self.choice_filters.items()},
            errors_only=bool(self.errors_only.value),
            sort=self.sort.value,
            snr_limits=None if snr_levels is None else (snr_levels[0], snr_levels[-1]),
            compare=self.compare_filter.value,
            compare_mode=self.compare_mode.value,
            tags=self.tags.as_dict(),
            tag=self.tag_filter.value,
        )

    def filtered(self) -> pd.DataFrame:
        """Every clip the current filters list, in listing order (all pages)."""
        return filter_clips(self.table, **self.filter_values())

    def _pages(self, n_rows: int) -> int:
        return max(1, math.ceil(n_rows / self.page_size.value))

    @property
    def n_pages(self) -> int:
        return self._pages(len(self.filtered()))

    def page_rows(self) -> pd.DataFrame:
        """The clips on the page being shown."""
        return self._page_of(self.filtered())

    def _page_of(self, rows: pd.DataFrame) -> pd.DataFrame:
        size = self.page_size.value
        return rows.iloc[self.page * size:(self.page + 1) * size]

    def go_to_page(self, page: int) -> None:
        self.page = int(min(max(page, 0), self.n_pages - 1))
        self.selected = self.page * self.page_size.value
        self.refresh()

    def select(self, index: int) -> None:
        """Select the ``index``-th listed clip (0-based, over all pages), turning the page as needed."""
        n = len(self.filtered())
        self.selected = int(min(max(index, 0), max(n - 1, 0)))
        self.page = self.selected // self.page_size.value
        self.refresh()

    def selected_row(self) -> pd.Series | None:
        rows = self.filtered()
        return rows.iloc[self.selected] if len(rows) else None

    def _on_filter(self, change: Any) -> None:
        if self._busy:
            return
        self.page = 0
        self.selected = 0
        self.refresh()

    def _on_class(self, change: Any) -> None:
        """The category list offers the chosen class's own categories (a selection that stays valid stays)."""
        cats = categories_of(self.table, change["new"])
        keep = tuple(c for c in self.category_filter.value if c in cats)
        self._busy = True
        try:
            self.category_filter.value = ()
            self.category_filter.options = cats
            self.category_filter.value = keep
            self.category_filter.rows = min(6, max(2, len(cats)))
        finally:
            self._busy = False
        self._on_filter(change)

    def _on_compare(self, change: Any) -> None:
        self.compare_mode.disabled = change["new"] is None
        self.errors_only.disabled = change["new"] is not None  # the comparison mode says what is listed
        self._on_filter(change)

    def _on_view(self, change: Any) -> None:
        self.refresh()

    def reset(self) -> None:
        """Every filter back to its default; the systems (A and B) stay."""
        self._busy = True
        try:
            self.class_filter.value = ALL
            self.category_filter.value = ()
            for sel in self.choice_filters.values():
                sel.value = ()
            for slider in (self.duration_filter, self.snr_filter):
                if slider is not None:
                    slider.index = (0, len(slider.options) - 1)
            self.errors_only.value = True
            self.sort.value = DEFAULT_SORT
            self.tag_filter.value = None
            self.compare_mode.value = "a_wrong_b_right"
        finally:
            self._busy = False
        self.message.value = ""
        self._on_filter(None)

    def filter_summary(self) -> str:
        """The filters in force, in words: ``non-speech clips · categories: dog, rain · 100-200 ms · ...``."""
        v = self.filter_values()
        parts = [{"speech": "speech clips", "nonspeech": "non-speech clips"}.get(v["label"], "both classes")]
        if v["categories"]:
            cats = list(v["categories"])
            shown = ", ".join(cats[:6]) + (f" and {len(cats) - 6} more" if len(cats) > 6 else "")
            parts.append(f"categories: {shown} ({len(cats)} of {len(self.category_filter.options)})")
        else:
            parts.append(f"all {len(self.category_filter.options)} categories")
        for slider, unit in ((self.duration_filter, "ms"), (self.snr_filter, "dB")):
            rng = self._slider_range(slider)
            if rng is not None:
                lo, hi = slider.label
                parts.append(f"{slider.description} {lo} to {hi}" if lo != hi else f"{slider.description} {lo}")
        for axis, picked in v["choices"].items():
            if picked:
                parts.append(f"{CHOICE_NAMES.get(axis, axis)}: {', '.join(picked)}")
        if v["compare"] is not None:
            mode = {m: k for k, m in COMPARE_MODES.items()}[v["compare_mode"]]
            parts.append(f"A = {v['system']}, B = {v['compare']}: {mode}")
        elif v["errors_only"]:
            parts.append("misclassified only")
        if v["tag"] is not None:
            parts.append("untagged" if v["tag"] == "" else f"tagged {v['tag']}")
        parts.append(f"sorted: {v['sort']}")
        return " · ".join(parts)

    def status_text(self, rows: pd.DataFrame | None = None) -> str:
        """The line above the clips: how many match, which page, or that none match."""
        rows = self.filtered() if rows is None else rows
        a = self.system_filter.value
        sys_rows = self.table[self.table["system_label"] == a]
        n_err = int((~sys_rows["correct"]).sum())
        overall = f"{a} misclassifies {n_err} of {len(sys_rows)} scored clips"
        if self.compare_filter.value is not None:
            d = discordant_counts(self.table, a, self.compare_filter.value)
            overall = (f"on the {d['n']} clips both scored, only A is right on {d['a_only']}, only B on {d['b_only']} "
                       f"(exact McNemar p = {d['p']:.3g}); both wrong on {d['both_wrong']}")
        if rows.empty:
            return f"{NO_MATCH} ({overall}; widen the filters.)"
        what = "clips" if (self.compare_filter.value is not None or not self.errors_only.value) else "misclassified clips"
        size, pages = self.page_size.value, self._pages(len(rows))
        first, last = self.page * size + 1, min((self.page + 1) * size, len(rows))
        return (f"{len(rows)} {what} match · showing {first}–{last} · page {self.page + 1} of {pages} · "
                f"clip {self.selected + 1} selected · {overall}")

    def refresh(self) -> None:
        """Recompute the list and redraw the current page."""
        rows = self.filtered()
        pages = self._pages(len(rows))
        self.page = min(self.page, pages - 1)
        self.selected = min(max(self.selected, 0), max(len(rows) - 1, 0))
        if not (self.page * self.page_size.value <= self.selected < (self.page + 1) * self.page_size.value):
            self.selected = self.page * self.page_size.value
        shown = self._page_of(rows)
        colour = "#a00" if rows.empty else "#222"
        self.status.value = f"<span style='color:{colour}'>{esc(self.status_text(rows))}</span>"
        self.summary.value = f"<div style='font-size:13px;color:#333'><b>Showing:</b> {esc(self.filter_summary())}</div>"
        self.prev_button.disabled = self.page <= 0
        self.next_button.disabled = self.page >= pages - 1
        if rows.empty:
            self.clips_box.children = [self.empty_message]
            return
        cards = []
        for i, (_, row) in enumerate(shown.iterrows()):
            card = self._card(row)
            if self.page * self.page_size.value + i == self.selected:
                card.add_class("speechbook-selected")
            else:
                card.remove_class("speechbook-selected")
            cards.append(card)
        self.clips_box.children = cards

    # -- keyboard and export (tags: ClipCards.tag) ----------------------------------------------------------------
    def handle_key(self, action: str) -> None:
        """What a key does (the keyboard widget sends its action here): ``next``, ``previous``,
        ``sources`` (show the selected clip's sources), ``tag:<tag>`` (``tag:`` clears)."""
        if action not in KEY_ACTIONS:
            return
        if action == "next":
            self.select(self.selected + 1)
        elif action == "previous":
            self.select(self.selected - 1)
        elif action == "sources":
            row = self.selected_row()
            if row is not None:
                self.show_sources(row)
        elif action.startswith("tag:"):
            row = self.selected_row()
            if row is not None:
                self.tag(row["clip_id"], action.split(":", 1)[1])

    def export(self, path: str | Path | None = None) -> Path:
        """Write the listed clips (all pages, in order, with their tags and the filters in force) to a CSV:
        ``<run>/listening_exports/listening_<time>.csv`` unless ``path`` is given."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("no run folder: pass path=<csv> to export")
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = self.run_dir / EXPORT_DIR / f"listening_{stamp}.csv"
        rows = self.filtered()
        cols = [c for c in ("clip_id", "system", "variant", "seed", "label", "pred", "p_speech", "pred_b", "p_speech_b",
                            "category", "duration_ms", "snr_db", "noise_type", "rt60_s", "filter", "bandlimit", "split",
                            "source_id", "group_id", "path") if c in rows.columns]
        out = rows[cols].assign(tag=[self.tags.get(c) for c in rows["clip_id"]], filters=self.filter_summary())
        if self.compare_filter.value is not None:
            out = out.assign(system_b=self.compare_filter.value)
        path = io.write_csv(Path(path), out)
        self.last_export = Path(path)
        self.message.value = f"<small>exported {len(out)} clips to <code>{esc(path)}</code></small>"
        return Path(path)
