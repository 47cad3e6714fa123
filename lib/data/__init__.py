"""The book's data: from recordings to a bank of degraded clips with labels, conditions and splits.

The modules, in the order the data flows through them:

* ``schema``: labels, splits, the columns of the sources table and of a bank manifest (DESIGN.md tables 1, 2);
* ``downloads``: the official ESC-50 and VoxConverse archives, fetched, verified and unpacked (online users);
* ``rttm``: long recordings with RTTM annotations, cut into speech and non-speech sources;
* ``sources``: the sources table and the noise recordings, from the local corpus, ESC-50 + VoxConverse or
  an RTTM folder (``load_sources``);
* ``splits``: group-disjoint, class-stratified train/dev/test assignment;
* ``plan``: the bank's parameters and its rows, before rendering;
* ``render``: one clip from its manifest row alone (reverberation, noise at an exact SNR, channel, cut);
* ``bank``: the content-addressed bank folder, built atomically or reused (``build_bank``);
* ``loading``: the one bank reader (``load_bank``) and the clips, level-normalized at load time;
* ``shortcuts``: can a trivial feature (bandwidth, level) tell the classes apart?

``from lib import data; data.build_bank(cfg)`` keeps working: the public names are re-exported here.
"""
from __future__ import annotations

from .bank import BANK_VERSION, bank_hash, bank_root, build_bank, find_bank
from .loading import load_bank, load_bank_meta, load_clip, load_clips, require_bank
from .plan import (
    ACTIVE_WINDOW_DB, BANDLIMIT_SHARE, BANK_PARAM_KEYS, CONTEXT_POST_S, CONTEXT_PRE_S, DESIGNS, bank_params, ofat_reference,
    plan_bank, select_sources,
)
from .render import BANDLIMITS, ClipParts, SourceAudio, apply_bandlimit, regenerate, render_clip
from .rttm import merge_intervals, nonspeech_regions, parse_rttm, sources_from_rttm_folder, speech_regions
from .schema import (
    BANK_COLUMNS, CORPUS_LABELS, CORPUS_REQUIRED, LABELS, SOURCE_COLUMNS, SPLITS, ManifestError, resolve_under,
)
from .shortcuts import shortcut_findings, shortcut_report
from .sources import (
    bank_sources, fingerprint, load_sources, read_corpus_manifest, read_esc50_meta, sources_from_esc50, sources_from_local,
    strip_segment,
)
from .splits import assign_splits, check_splits, split_disjointness, split_rows, split_table, subset
