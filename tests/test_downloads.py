"""lib.data.downloads without network: the HTTP call is replaced by fakes. Parsing of ESC-50's csv and of
RTTM files made in the test, checksums, resumable downloads, the no-network error, and sources cut
from RTTM-annotated recordings (speech only from annotated speech, non-speech only away from it)."""
from __future__ import annotations

import hashlib
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from lib import config, data
from lib.data import downloads, rttm
from lib.data.downloads import ChecksumError, DownloadError, Remote

PAYLOAD = bytes(range(256)) * 400  # 102400 bytes


def remote(payload: bytes = PAYLOAD, sha: str | None = "auto") -> Remote:
    return Remote("Test set", "https://example.org/test.zip", "test.zip", hashlib.sha256(payload).hexdigest() if sha == "auto" else sha)


class FakeResponse:
    def __init__(self, status: int, body: bytes, headers: dict | None = None, fail_after: int | None = None):
        self.status_code, self.body, self.headers, self.fail_after = status, body, headers or {}, fail_after

    def iter_content(self, chunk_size: int = 1024):
        sent = 0
        for i in range(0, len(self.body), 1000):
            if self.fail_after is not None and sent >= self.fail_after:
                raise ConnectionResetError("connection reset by peer")
            block = self.body[i : i + 1000]
            sent += len(block)
            yield block


class FakeServer:
    """Serves PAYLOAD and honours Range requests; records the headers it was sent."""

    def __init__(self, payload: bytes = PAYLOAD, fail_after: int | None = None, honour_range: bool = True):
        self.payload, self.fail_after, self.honour_range, self.requests = payload, fail_after, honour_range, []

    def __call__(self, url, headers, timeout=30.0):
        self.requests.append(dict(headers))
        rng = headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.split("=")[1].rstrip("-"))
            if start >= len(self.payload):
                return FakeResponse(416, b"")
            body = self.payload[start:]
            return FakeResponse(206, body, {"Content-Range": f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}"}, self.fail_after)
        return FakeResponse(200, self.payload, {"Content-Length": str(len(self.payload))}, self.fail_after)


def test_download_verifies_and_skips_when_present(tmp_path, monkeypatch):
    server = FakeServer()
    monkeypatch.setattr(downloads, "_http_get", server)
    p = downloads.download(remote(), tmp_path, progress=False)
    assert p.read_bytes() == PAYLOAD and not (tmp_path / "test.zip.part").exists()
    downloads.download(remote(), tmp_path, progress=False)
    assert len(server.requests) == 1  # verified file: not fetched again


def test_download_resumes_with_a_range_request(tmp_path, monkeypatch):
    server = FakeServer(fail_after=30_000)
    monkeypatch.setattr(downloads, "_http_get", server)
    with pytest.raises(DownloadError, match=r"broke off after 30000 bytes.*run again to resume"):
        downloads.download(remote(), tmp_path, progress=False)
    assert (tmp_path / "test.zip.part").stat().st_size == 30_000
    server.fail_after = None
    p = downloads.download(remote(), tmp_path, progress=False)
    assert server.requests[-1] == {"Range": "bytes=30000-"}
    assert p.read_bytes() == PAYLOAD


def test_download_restarts_when_the_server_ignores_range(tmp_path, monkeypatch):
    (tmp_path / "test.zip.part").write_bytes(b"garbage from an old attempt")
    server = FakeServer(honour_range=False)
    monkeypatch.setattr(downloads, "_http_get", server)
    assert downloads.download(remote(), tmp_path, progress=False).read_bytes() == PAYLOAD


def test_download_complete_part_file(tmp_path, monkeypatch):
    (tmp_path / "test.zip.part").write_bytes(PAYLOAD)
    monkeypatch.setattr(downloads, "_http_get", FakeServer())
    assert downloads.download(remote(), tmp_path, progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_raises_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "_http_get", FakeServer())
    with pytest.raises(ChecksumError, match=r"Test set: checksum mismatch for test\.zip \(expected sha256 0{64}, got [0-9a-f]{64}\)"):
        downloads.download(remote(sha="0" * 64), tmp_path, progress=False)
    assert not (tmp_path / "test.zip").exists() and (tmp_path / "test.zip.part.bad").exists()


def test_checksum_mismatch_of_a_present_file(tmp_path):
    (tmp_path / "test.zip").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match=r"checksum mismatch for .*test\.zip.*delete the file"):
        downloads.download(remote(), tmp_path, progress=False)


def test_no_network_error_is_clear(tmp_path, monkeypatch):
    import requests

    def offline(url, headers, timeout=30.0):
        raise requests.ConnectionError("Failed to resolve 'example.org' (Name or service not known)")

    monkeypatch.setattr(downloads, "_http_get", offline)
    with pytest.raises(DownloadError, match=r"cannot download Test set from https://example\.org/test\.zip.*network access.*place it at .*test\.zip.*DATA_DIR"):
        downloads.download(remote(), tmp_path, progress=False)


def test_http_error_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "_http_get", lambda url, headers, timeout=30.0: FakeResponse(404, b""))
    with pytest.raises(DownloadError, match="HTTP 404"):
        downloads.download(remote(), tmp_path, progress=False)


def test_esc50_source_needs_network_says_so(tmp_path, monkeypatch):
    def offline(url, headers, timeout=30.0):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(downloads, "_http_get", offline)
    cfg = config.resolve("cpu", data_source="esc50_voxconverse", bank_dir=str(tmp_path / "banks"))
    cfg["downloads_dir"] = str(tmp_path / "dl")
    with pytest.raises(DownloadError, match="cannot download ESC-50 from https://github.com/karolpiczak/ESC-50"):
        data.build_bank(cfg, progress=False)


def test_extract_is_atomic_and_refuses_escaping_members(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("a/b.txt", "hello")
    out = downloads.extract(good, tmp_path / "out")
    assert (out / "a" / "b.txt").read_text() == "hello" and (out / ".complete").exists()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        import io as _io

        t.addfile(info, _io.BytesIO(b"bad"))
    with pytest.raises(DownloadError, match="outside"):
        downloads.extract(evil, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and not (tmp_path.parent / "escaped.txt").exists()


# ------------------------------------------------------------------------------------------ ESC-50


def make_esc50(root: Path, with_src_file: bool = True) -> Path:
    rows = [
        ("1-100032-A-0.wav", 1, 0, "dog", True, "100032", "A"),
        ("1-100032-B-0.wav", 1, 0, "dog", True, "100032", "B"),
        ("2-5500-A-26.wav", 2, 26, "laughing", False, "5500", "A"),
        ("3-7000-A-20.wav", 3, 20, "crying_baby", True, "7000", "A"),
        ("4-8000-A-10.wav", 4, 10, "rain", True, "8000", "A"),
        ("5-9000-A-21.wav", 5, 21, "sneezing", False, "9000", "A"),
    ]
    df = pd.DataFrame(rows, columns=["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    if not with_src_file:
        df = df.drop(columns=["src_file", "take"])
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    df.to_csv(root / "meta" / "esc50.csv", index=False)
    for f in df["filename"]:
        sf.write(str(root / "audio" / f), np.zeros(44100 * 5, dtype=np.float32), 44100, subtype="PCM_16")
    return root


@pytest.mark.parametrize("with_src_file", [True, False])
def test_esc50_sources(tmp_path, with_src_file):
    root = make_esc50(tmp_path / "ESC-50-master", with_src_file)
    src, noise = data.sources_from_esc50(root)
    assert list(src.columns[: len(data.SOURCE_COLUMNS)]) == data.SOURCE_COLUMNS
    assert (src["label"] == "nonspeech").all()  # laughing, crying, sneezing stay NONSPEECH
    assert {"laughing", "crying_baby", "sneezing"} <= set(src["category"])
    dog = src[src["category"] == "dog"]
    assert dog["group_id"].nunique() == 1 and dog["group_id"].iloc[0] == "esc50:100032"  # two takes, one recording
    assert list(noise["category"]) == ["rain"] and "rain" not in set(src["category"])
    assert src.loc[src["category"] == "laughing", "license"].item() == "CC BY-NC 3.0"
    assert src.loc[src["category"] == "dog", "license"].iloc[0] == "CC BY 3.0"
    assert all(Path(p).exists() for p in src["path"])


def test_esc50_bad_csv(tmp_path):
    root = make_esc50(tmp_path / "e")
    pd.read_csv(root / "meta" / "esc50.csv").drop(columns=["category"]).to_csv(root / "meta" / "esc50.csv", index=False)
    with pytest.raises(ValueError, match=r"esc50\.csv lacks column\(s\) category"):
        data.read_esc50_meta(root)
    with pytest.raises(DownloadError, match="ESC-50 metadata .* not found"):
        data.read_esc50_meta(tmp_path / "nothing")


# -------------------------------------------------------------------------------------------- RTTM

RTTM = """\
;; a comment
SPEAKER rec1 1 1.00 3.00 <NA> <NA> spk00 <NA> <NA>
SPEAKER rec1 1 3.50 2.00 <NA> <NA> spk01 <NA> <NA>
SPEAKER rec1 1 12.00 6.50 <NA> <NA> spk00 <NA> <NA>
SPKR-INFO rec1 1 <NA> <NA> <NA> unknown spk00 <NA> <NA>
"""


def test_parse_rttm(tmp_path):
    p = tmp_path / "rec1.rttm"
    p.write_text(RTTM)
    df = rttm.parse_rttm(p)
    assert list(df.columns) == ["file_id", "start_s", "end_s", "speaker"]
    assert len(df) == 3 and df["end_s"].tolist() == [4.0, 5.5, 18.5] and df["speaker"].tolist() == ["spk00", "spk01", "spk00"]


@pytest.mark.parametrize("line,msg", [
    ("SPEAKER rec1 1 1.0 2.0 <NA>", "at least 8 fields"),
    ("SPEAKER rec1 1 one 2.0 <NA> <NA> spk00 <NA> <NA>", "must be numbers"),
    ("SPEAKER rec1 1 1.0 -2.0 <NA> <NA> spk00 <NA> <NA>", "negative"),
])
def test_parse_rttm_bad_lines_name_file_and_line(tmp_path, line, msg):
    p = tmp_path / "bad.rttm"
    p.write_text(RTTM + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.rttm:6: .*{msg}"):
        rttm.parse_rttm(p)


def test_regions(tmp_path):
    p = tmp_path / "rec1.rttm"
    p.write_text(RTTM)
    segs = rttm.parse_rttm(p)
    assert rttm.speech_regions(segs) == [(1.0, 5.5), (12.0, 18.5)]
    gaps = rttm.nonspeech_regions(segs, duration_s=25.0, margin_s=0.5)
    assert gaps == [(0.0, 0.5), (6.0, 11.5), (19.0, 25.0)]



def test_merge_intervals():
    got = rttm.merge_intervals([(5.0, 6.0), (1.0, 2.0), (1.5, 3.0), (3.0, 4.0), (7.0, 7.0), (8.0, 7.5)])
    assert got == [(1.0, 4.0), (5.0, 6.0)]  # overlapping and touching merged, empty and reversed ones dropped
    assert rttm.merge_intervals([]) == []

def test_rttm_folder_sources_never_cross_annotations(tmp_path):
    folder = tmp_path / "recs"
    (folder / "audio").mkdir(parents=True)
    (folder / "rttm").mkdir()
    (folder / "rttm" / "rec1.rttm").write_text(RTTM)
    sf.write(str(folder / "audio" / "rec1.wav"), np.zeros(16000 * 25, dtype=np.float32), 16000, subtype="PCM_16")
    src, noise = rttm.sources_from_rttm_folder(folder, dataset="vox", margin_s=0.5)
    assert len(noise) == 0 and (src["group_id"] == "vox:rec1").all()
    speech = rttm.speech_regions(rttm.parse_rttm(folder / "rttm" / "rec1.rttm"))
    for r in src.itertuples():
        assert r.end_s - r.start_s >= rttm.MIN_SEGMENT_S - 1e-9 and r.end_s - r.start_s <= rttm.CHUNK_S + 1e-9
        inside = any(a - 1e-6 <= r.start_s and r.end_s <= b + 1e-6 for a, b in speech)
        if r.label == "speech":
            assert inside
        else:  # at least the margin away from every speech stretch
            assert all(r.end_s <= a - 0.5 + 1e-6 or r.start_s >= b + 0.5 - 1e-6 for a, b in speech)
    assert set(src["label"]) == {"speech", "nonspeech"}
    # 0.0-0.5 is too short; 6.0-11.5 gives two chunks; 19-25 two chunks
    assert len(src[src["label"] == "nonspeech"]) == 4


def test_rttm_without_audio_names_the_file_id(tmp_path):
    (tmp_path / "x.rttm").write_text(RTTM)
    with pytest.raises(ValueError, match=r"x\.rttm annotates 'rec1' but there is no audio file rec1"):
        rttm.sources_from_rttm_folder(tmp_path)


def test_bank_from_an_rttm_folder(tmp_path):
    """data_source=rttm_folder end to end: windows cut from long recordings, group = recording."""
    folder = tmp_path / "recs"
    folder.mkdir()
    r = np.random.default_rng(0)
    t = np.arange(16000 * 30) / 16000
    for k in range(8):
        lines = []
        x = 0.01 * r.standard_normal(len(t))
        for j, start in enumerate([2.0, 12.0, 22.0]):
            lines.append(f"SPEAKER rec{k} 1 {start:.2f} 4.00 <NA> <NA> spk{j % 2} <NA> <NA>")
            m = (t >= start) & (t < start + 4)
            x[m] += 0.3 * np.sin(2 * np.pi * (150 + 10 * k) * t[m])
        (folder / f"rec{k}.rttm").write_text("\n".join(lines) + "\n")
        sf.write(str(folder / f"rec{k}.wav"), x.astype(np.float32), 16000, subtype="PCM_16")
    cfg = config.resolve("cpu", data_source="rttm_folder", data_dir=str(folder), bank_dir=str(tmp_path / "banks"),
                         durations_ms=[100, 500], snrs_db=[10], noise_types=["white"], clips_per_cell=5, bandlimit_augment=False)
    m = data.build_bank(cfg, progress=False)
    df = data.load_bank(m)
    assert (df.groupby("group_id")["split"].nunique() == 1).all()
    assert set(df["label"]) == {"speech", "nonspeech"} and len(df) == 2 * 1 * 2 * 5
