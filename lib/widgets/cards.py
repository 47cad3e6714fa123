"""One clip's card: its labels, ``p_speech`` and bank axes, a spectrogram, a player for the mixture as the model
heard it, tag buttons, and on request players for its clean source, context and noise.

:class:`ClipCards` is the part of :class:`lib.widgets.tool.ListeningTool` that draws and fills the cards; the tool
keeps the listing, the filters and the navigation.
"""
from __future__ import annotations

import html
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import media
from .listing import NONE, axis_text
from .tags import TAGS


def esc(text: Any) -> str:
    """HTML-escaped text for the widgets' HTML."""
    return html.escape(str(text))


class ClipCards:
    """The cards of :class:`~lib.widgets.tool.ListeningTool` (a mixin: it uses the tool's ``table``, ``manifest``,
    ``normalization``, ``tags``, filters, ``message`` and card caches). ``media.spectrogram_png`` and
    ``media.wav_bytes`` are looked up at call time, so tests can stub the drawing."""

    def tag(self, clip_id: str, tag: str) -> None:
        """Tag a clip (``""`` clears) and save the run's tags file; the card's buttons follow."""
        row = self.table[self.table["clip_id"] == str(clip_id)]
        label = str(row["label"].iloc[0]) if len(row) else ""
        changed = self.tags.set(str(clip_id), tag, system=self.system_filter.value, label=label)
        buttons = self._tag_buttons.get(str(clip_id))
        if buttons is not None and buttons.value != (tag or None):
            self._busy = True
            try:
                buttons.value = tag or None
            finally:
                self._busy = False
        if changed:
            where = self.tags.path if self.tags.path is not None else "memory"
            self.message.value = f"<small>{esc(clip_id)}: {esc(tag or 'tag cleared')} (saved to {esc(where)})</small>"
            if self.tag_filter.value is not None:
                self.refresh()

    def load_audio(self, row: Mapping[str, Any]) -> np.ndarray:
        """The clip as the chosen normalization leaves it (float32, 16 kHz)."""
        has_path = "audio_path" in row and isinstance(row["audio_path"], str) and row["audio_path"]
        if not has_path and not ("path" in row and isinstance(row["path"], str) and row["path"]):
            raise KeyError(f"clip {row['clip_id']} is not in the bank manifest (no path to its audio)")
        if self.manifest is None and not has_path:
            raise FileNotFoundError("no bank manifest given: pass manifest=<bank manifest.csv> to hear clips")
        root = None if self.manifest is None else (self.manifest if self.manifest.is_dir() else self.manifest.parent)
        loader = self._loader or media.default_loader()
        return np.asarray(loader(row, self.normalization.value, root), dtype=np.float32)

    def _player(self, audio: np.ndarray, what: str, main: bool = False) -> Any:
        import ipywidgets as w

        player = w.Audio(value=media.wav_bytes(audio), format="wav", autoplay=False, loop=False, layout=w.Layout(width="300px"))
        player.add_class("speechbook-audio" if main else "speechbook-part-audio")
        label = w.HTML(f"<span style='font-size:12px'><b>{esc(what)}</b> · {media.duration_text(len(audio))}</span>",
                       layout=w.Layout(width="230px"))
        label.add_class("speechbook-duration")
        return w.HBox([label, player], layout=w.Layout(align_items="center"))

    def show_sources(self, row: Mapping[str, Any]) -> None:
        """Fill the card's sources box: clean source under the window, context, noise as mixed, noise
        recording. Window parts get the mixture's own playback gain, so their levels compare."""
        import ipywidgets as w

        from ..audio import normalize

        box = self._parts_boxes.get(str(row["clip_id"]))
        if box is None:
            return
        try:
            parts = self._parts_loader(row)
            mix = np.asarray(parts["mixture"], dtype=np.float64)
            heard = normalize(mix.astype(np.float32), self.normalization.value)
            gain = float(np.dot(heard, mix) / np.dot(mix, mix)) if np.dot(mix, mix) > 0 else 1.0
            a, b = parts["context_window"]
            n_ctx = len(parts["context"])
            children = [
                self._player(gain * np.asarray(parts["clean"]), "clean source (the window)"),
                self._player(gain * np.asarray(parts["context"]),
                             f"source in context ({media.duration_text(a)} before, {media.duration_text(n_ctx - b)} after)"),
                self._player(gain * np.asarray(parts["noise"]),
                             f"noise as mixed ({row.get('noise_type', '')}, SNR {axis_text(row.get('snr_db'))} dB)"),
            ]
            rec = parts.get("noise_recording")
            if rec is not None and len(rec):
                children.append(self._player(normalize(np.asarray(rec, dtype=np.float32), "rms"),
                                             f"noise recording {parts.get('noise_source_id', '')} (rms)"))
            else:
                children.append(w.HTML(f"<small>noise: synthetic {esc(row.get('noise_type', ''))} noise, no recording</small>"))
            note = w.HTML(f"<small>window parts at the mixture's {esc(self.normalization.value)} playback gain</small>")
            box.children = [note, *children]
        except Exception as exc:  # the corpus may be missing here: say so on the card
            box.children = [w.HTML(f"<span style='color:#a00'>cannot load the sources: {esc(type(exc).__name__)}: "
                                   f"{esc(str(exc))}</span>")]
        box.add_class("speechbook-sources-shown")

    def _card(self, row: pd.Series) -> Any:
        import ipywidgets as w

        compare = self.compare_filter.value
        key = (str(row["system_label"]), str(compare), str(row["clip_id"]), str(self.normalization.value))
        if key in self._cache:
            card, buttons, parts_box = self._cache[key]
            buttons.value = self.tags.get(row["clip_id"]) or None
            self._tag_buttons[str(row["clip_id"])] = buttons
            self._parts_boxes[str(row["clip_id"])] = parts_box
            return card
        info = w.HTML(describe(row, compare))
        parts: list[Any] = [info]
        buttons = w.ToggleButtons(options=[(t, t) for t in TAGS], value=self.tags.get(row["clip_id"]) or None,
                                  tooltips=["the label and the audio agree", "hard to say, even listening",
                                            "the clip's label is wrong"],
                                  style={"button_width": "110px"})
        buttons.add_class("speechbook-tags")
        clip_id = str(row["clip_id"])
        buttons.observe(lambda ch: None if self._busy else self.tag(clip_id, ch["new"] or ""), names="value")
        clear = w.Button(description="clear tag", layout=w.Layout(width="90px"))
        clear.on_click(lambda _: self.tag(clip_id, ""))
        parts_box = w.VBox()
        parts_box.add_class("speechbook-sources")
        sources_button = w.Button(description="clean source, context, noise", icon="music",
                                  layout=w.Layout(width="240px"))
        sources_button.add_class("speechbook-sources-button")
        row_dict = row.to_dict()
        sources_button.on_click(lambda _: self.show_sources(row_dict))
        try:
            audio = self.load_audio(row)
            parts.append(self._player(audio, f"mixture as heard ({self.normalization.value})", main=True))
            picture = w.Image(value=media.spectrogram_png(audio, title=str(row["clip_id"])), format="png",
                              layout=w.Layout(width="420px"))
            parts += [w.HBox([buttons, clear]), sources_button, parts_box]
            card = w.HBox([picture, w.VBox(parts)], layout=w.Layout(border="1px solid #ddd", margin="4px 0",
                                                                     padding="4px"))
        except Exception as exc:  # a missing or unreadable file must not break the whole tool
            parts.append(w.HTML(f"<span style='color:#a00'>cannot load audio: {esc(type(exc).__name__)}: "
                                f"{esc(str(exc))}</span>"))
            parts.append(w.HBox([buttons, clear]))
            card = w.VBox(parts, layout=w.Layout(border="1px solid #ddd", margin="4px 0", padding="4px"))
        card.add_class("speechbook-clip")
        self._cache[key] = (card, buttons, parts_box)
        self._tag_buttons[clip_id] = buttons
        self._parts_boxes[clip_id] = parts_box
        return card


def describe(row: Mapping[str, Any], compare: str | None = None) -> str:
    label, pred, p = str(row["label"]), str(row["pred"]), float(row["p_speech"])
    ok = label == pred
    mark = "<span style='color:#080'>correct</span>" if ok else "<span style='color:#a00'><b>wrong</b></span>"
    lines = [
        f"<b>{esc(row['clip_id'])}</b> · {mark}",
        f"true: <b>{esc(label.upper())}</b> · predicted: <b>{esc(pred.upper())}</b>",
        f"p_speech = <b>{p:.3f}</b> · confidence {float(row['confidence']):.3f}",
    ]
    if compare is not None and "p_speech_b" in row and pd.notna(row["p_speech_b"]):
        ok_b = bool(row["correct_b"])
        lines[0] = f"<b>{esc(row['clip_id'])}</b>"
        lines[2] = (f"A {esc(row['system_label'])}: p_speech = <b>{p:.3f}</b> · {mark}<br>"
                    f"B {esc(compare)}: p_speech = <b>{float(row['p_speech_b']):.3f}</b> · "
                    + ("<span style='color:#080'>correct</span>" if ok_b else "<span style='color:#a00'><b>wrong</b></span>"))
        lines[1] = f"true: <b>{esc(label.upper())}</b> · A says <b>{esc(pred.upper())}</b> · B says <b>{esc(str(row['pred_b']).upper())}</b>"
    meta = []
    if "category" in row and axis_text(row["category"]) != NONE:
        meta.append(f"category: {esc(row['category'])}")
    if "duration_ms" in row and pd.notna(row["duration_ms"]):
        meta.append(f"{float(row['duration_ms']):g} ms")
    if "snr_db" in row and pd.notna(row["snr_db"]):
        snr = float(row["snr_db"])
        meta.append("clean" if np.isinf(snr) else f"SNR {snr:g} dB")
    if "noise_type" in row and axis_text(row["noise_type"]) != NONE:
        meta.append(f"noise: {esc(row['noise_type'])}")
    if "rt60_s" in row and pd.notna(row["rt60_s"]):
        meta.append(f"RT60 {float(row['rt60_s']):g} s")
    if "filter" in row and axis_text(row["filter"]) != NONE:
        meta.append(f"filter: {esc(row['filter'])}")
    if "bandlimit" in row and axis_text(row["bandlimit"]) != NONE:
        meta.append(f"band-limit: {esc(row['bandlimit'])}")
    if "split" in row and axis_text(row["split"]) != NONE:
        meta.append(f"split: {esc(row['split'])}")
    if meta:
        lines.append(" · ".join(meta))
    for col, name in (("source_id", "source"), ("group_id", "group")):
        if col in row and axis_text(row[col]) != NONE:
            lines.append(f"<small>{name}: {esc(row[col])}</small>")
    return "<div class='speechbook-clip-info' style='font-size:13px;line-height:1.5'>" + "<br>".join(lines) + "</div>"


