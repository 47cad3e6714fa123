"""Keyboard: a few lines of JavaScript through anywidget, sending key actions to the tool."""
from __future__ import annotations

from typing import Any

KEY_ACTIONS = ("next", "previous", "sources", "tag:fine", "tag:ambiguous", "tag:mislabeled", "tag:")
KEYBOARD_ESM = r"""
const KEYS = {"j": "next", "ArrowRight": "next", "ArrowDown": "next", "k": "previous", "ArrowLeft": "previous",
              "ArrowUp": "previous", " ": "play", "s": "sources", "1": "tag:fine", "2": "tag:ambiguous",
              "3": "tag:mislabeled", "0": "tag:"};
function render({ model, el }) {
  const hint = document.createElement("div");
  hint.className = "speechbook-keys";
  hint.tabIndex = 0;
  hint.textContent = "⌨ click the tool, then: j / → next clip · k / ← previous · space play / pause · " +
                     "s sources · 1 fine · 2 ambiguous · 3 mislabeled · 0 clear tag";
  el.appendChild(hint);
  let root = null;
  const onKey = (e) => {
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const action = KEYS[e.key];
    if (!action) return;
    e.preventDefault();
    e.stopPropagation();
    if (action === "play") {
      const a = root.querySelector(".speechbook-selected audio.speechbook-audio") || root.querySelector("audio.speechbook-audio");
      if (a) { if (a.paused) { a.currentTime = 0; a.play().catch(() => {}); } else { a.pause(); } }
      return;
    }
    model.send({ action });
  };
  // the tool's box draws its children one by one: wait until this view sits inside it
  let tries = 0;
  const attach = () => {
    root = el.closest(".speechbook-listening-tool");
    if (!root) { if (tries++ < 100) setTimeout(attach, 50); return; }
    root.setAttribute("data-lm-suppress-shortcuts", "true");  // JupyterLab's notebook keys stay out of the tool
    if (!root.hasAttribute("tabindex")) root.tabIndex = 0;
    root.addEventListener("keydown", onKey);
    root.classList.add("speechbook-keys-ready");
  };
  attach();
  return () => { if (root) root.removeEventListener("keydown", onKey); };
}
export default { render };
"""
KEYBOARD_CSS = """
.speechbook-keys { font-size: 12px; color: #555; padding: 2px 6px; border: 1px dashed #bbb; border-radius: 3px; }
.speechbook-listening-tool:focus-within .speechbook-keys { border-color: #1f77b4; color: #1f4e79; }
.speechbook-listening-tool:focus { outline: 2px solid #1f77b4; outline-offset: 2px; }
.speechbook-selected { box-shadow: 0 0 0 3px #1f77b4; }
"""


def keyboard_widget() -> Any:
    """The keyboard control (an anywidget), or None where anywidget is missing (the buttons still work)."""
    try:
        import anywidget
    except ImportError:
        return None

    class KeyboardControl(anywidget.AnyWidget):
        _esm = KEYBOARD_ESM
        _css = KEYBOARD_CSS

    return KeyboardControl()

