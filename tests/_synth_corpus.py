"""A small synthetic corpus in the format of ../shared/data (manifest.csv + 16 kHz mono WAV files).

Enough material for every chapter of the book on the `ci` profile's bank shape: sources of at least 1 s
(the longest clip duration) from many speakers and recordings, so that group-disjoint splits hold both
classes, and a few noise recordings for each split's real noise and chapter 09's scene beds. The sounds are
``_synth_audio``'s formant-like "speech" and noises/tones: a tiny model can tell them apart, so the chapters
have something to measure, but the numbers say nothing about real speech.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from _synth_audio import SR, nonspeech, speechlike

COLUMNS = ["path", "label", "category", "speaker", "source", "source_repo", "original_path", "license",
           "sample_rate_original", "duration_s"]
NONSPEECH_CATEGORIES = ("dog", "rain", "door", "cough", "engine", "bird")


def write_corpus(root: Path, speakers: int = 24, clips_per_speaker: int = 2, nonspeech_recordings: int = 40,
                 noise_recordings: int = 6, seed: int = 0) -> Path:
    """Write the corpus under ``root`` and return ``root`` (its ``manifest.csv`` beside the audio)."""
    rng = np.random.default_rng(seed)
    rows = []

    def put(rel: str, x: np.ndarray, **meta) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x, SR, subtype="PCM_16")
        rows.append({"path": rel, "duration_s": f"{len(x) / SR:.3f}", "source": "synthetic", "license": "CC0", **meta})

    def seconds(lo: float, hi: float) -> int:
        return int(rng.uniform(lo, hi) * SR)

    for spk in range(speakers):
        for k in range(clips_per_speaker):
            put(f"speech/s{spk:02d}_{k}.wav", speechlike(seconds(1.5, 3.0), rng), label="speech", category="speech",
                speaker=f"syn_{spk:02d}", source_repo="synthetic/speech", original_path=f"s{spk:02d}_{k}.wav",
                sample_rate_original="8000" if spk % 6 == 0 else "16000")
    for rec in range(nonspeech_recordings):
        put(f"nonspeech/n{rec:02d}.wav", nonspeech(seconds(1.5, 3.0), rng), label="nonspeech",
            category=NONSPEECH_CATEGORIES[rec % len(NONSPEECH_CATEGORIES)], speaker="", source_repo="synthetic/nonspeech",
            original_path=f"n{rec:02d}.ogg", sample_rate_original="8000" if rec % 8 == 0 else "44100")
    for rec in range(noise_recordings):
        x = np.cumsum(rng.standard_normal(5 * SR))  # brown-ish background, level-normalised
        x = (0.05 * (x - x.mean()) / (x.std() + 1e-12)).astype(np.float32)
        put(f"noise/z{rec}.wav", x, label="noise", category="hum", speaker="", source_repo="synthetic/noise",
            original_path=f"z{rec}.wav", sample_rate_original="16000")
    pd.DataFrame(rows)[COLUMNS].to_csv(root / "manifest.csv", index=False)
    return root
