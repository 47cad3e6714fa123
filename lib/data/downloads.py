"""Official downloads (ESC-50, VoxConverse), for users with network access.

* ``download(remote, folder)``: HTTP download with a sha256 check, resumed with an HTTP ``Range``
  request from the ``.part`` file a broken download left behind; a clear ``DownloadError`` when there
  is no network, saying how to place the file by hand.
* ``download_esc50(root)`` / ``download_voxconverse(root)``: download once, verify, extract atomically
  (a folder appears only complete), and afterwards work offline.

Turning what was downloaded into sources is not done here: ``lib.data.sources`` reads ESC-50's metadata
and ``lib.data.rttm`` cuts annotated recordings.

The sha256 sums below were recorded by other projects that pinned these files (see data/README.md);
they could not be verified from this offline machine. GitHub's ``master`` archive of ESC-50 can
change when the repository does: a mismatch then says so and how to proceed.
"""
from __future__ import annotations

import os
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import io


class DownloadError(RuntimeError):
    """A download failed (no network, HTTP error); the message says what to do instead."""


class ChecksumError(DownloadError):
    """A downloaded file's sha256 differs from the expected one; the message names the file."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    filename: str
    sha256: str | None
    size: int | None = None
    license: str = ""


ESC50 = Remote(
    "ESC-50", "https://github.com/karolpiczak/ESC-50/archive/master.zip", "ESC-50-master.zip",
    "805afc618aff80eff0641d51311647871fead5807da68bb18e43a27db47a79ce", 645_695_005,
    "CC BY-NC 3.0 (ESC-10 subset: CC BY 3.0); K. J. Piczak, ESC: Dataset for Environmental Sound Classification, ACM MM 2015",
)
VOXCONVERSE_COMMIT = "24bf60be297701cd7e4ef18550c6d390c1b87365"  # annotations v0.3
VOXCONVERSE_RTTM = Remote(
    "VoxConverse annotations", f"https://github.com/joonson/voxconverse/archive/{VOXCONVERSE_COMMIT}.tar.gz",
    f"voxconverse-{VOXCONVERSE_COMMIT[:7]}.tar.gz", "e8c25c91b014657d7e4ad86f9bef4a7eb399929d8d4fab910d8e6c6ab63d1197",
    None, "CC BY 4.0",
)
VOXCONVERSE_DEV = Remote(
    "VoxConverse dev audio", "https://www.robots.ox.ac.uk/~vgg/data/voxconverse/data/voxconverse_dev_wav.zip",
    "voxconverse_dev_wav.zip", "e83a68b5df3bc945a3cf4544102038792ae79972753c585769e58ea677c523a8", 1_988_647_478,
    "CC BY 4.0 annotations; audio from YouTube, for research (J. S. Chung et al., Spot the conversation, Interspeech 2020)",
)
VOXCONVERSE_TEST = Remote(
    "VoxConverse test audio", "https://www.robots.ox.ac.uk/~vgg/data/voxconverse/data/voxconverse_test_wav.zip",
    "voxconverse_test_wav.zip", "472ebf1eaeb1dcb5c311b07a8b5c31bcedcccbf98f386d90a88cde2452da8c68", None,
    VOXCONVERSE_DEV.license,
)


def _http_get(url: str, headers: dict[str, str], timeout: float = 30.0):
    """The one network call (tests replace it). Returns a streaming ``requests`` response."""
    import requests

    return requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)


def sha256_of(path: str | os.PathLike) -> str:
    return io.sha256_file(path)


def download(remote: Remote, folder: str | os.PathLike, *, progress: bool = True, chunk: int = 1 << 20) -> Path:
    """Download ``remote`` into ``folder`` (resuming a ``.part`` file) and verify its sha256.

    Returns the verified file. A file already there with the right checksum is not fetched again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.filename
    part = folder / (remote.filename + ".part")
    if target.exists():
        _verify(target, remote)
        return target
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _http_get(remote.url, headers)
    except Exception as e:  # ConnectionError, Timeout, DNS failure, proxy refusal ...
        raise DownloadError(
            f"cannot download {remote.name} from {remote.url} ({type(e).__name__}: {e}); is there network access? "
            f"Either download it elsewhere and place it at {target} (sha256 {remote.sha256}), or use the local corpus "
            "instead: data_source=local with DATA_DIR (or data_dir=) pointing at a folder with manifest.csv"
        ) from e
    status = int(getattr(resp, "status_code", 0))
    if status == 416 and have:  # nothing left to fetch: the .part file is complete
        mode = None
    elif status == 206 and have:
        mode = "ab"
    elif status == 200:
        mode, have = "wb", 0  # server ignored the Range header: start over
    else:
        raise DownloadError(f"downloading {remote.name} from {remote.url}: HTTP {status}; try again later or place the file at {target}")
    if mode:
        total = _total_size(resp, have) or remote.size
        bar = _bar(progress, total, have, remote.name)
        try:
            with open(part, mode) as f:
                for block in resp.iter_content(chunk_size=chunk):
                    if block:
                        f.write(block)
                        if bar is not None:
                            bar.update(len(block))
        except Exception as e:
            raise DownloadError(
                f"download of {remote.name} broke off after {part.stat().st_size if part.exists() else 0} bytes ({e}); "
                f"run again to resume from {part}"
            ) from e
        finally:
            if bar is not None:
                bar.close()
    got = sha256_of(part)
    if remote.sha256 and got != remote.sha256:
        bad = part.with_name(part.name + ".bad")
        os.replace(part, bad)
        raise ChecksumError(
            f"{remote.name}: checksum mismatch for {target.name} (expected sha256 {remote.sha256}, got {got}); the file was "
            f"moved to {bad}. The download was corrupted, or the upstream file changed: delete it and run again, or, if "
            "you trust the new file, rename it to the target and pass its sha256"
        )
    os.replace(part, target)
    return target


def _verify(path: Path, remote: Remote) -> None:
    if remote.sha256:
        got = sha256_of(path)
        if got != remote.sha256:
            raise ChecksumError(
                f"{remote.name}: checksum mismatch for {path} (expected sha256 {remote.sha256}, got {got}); delete the file "
                "and run again to download it afresh"
            )


def _total_size(resp: Any, have: int) -> int | None:
    headers = getattr(resp, "headers", {}) or {}
    rng = headers.get("Content-Range", "")
    m = re.search(r"/(\d+)$", rng)
    if m:
        return int(m.group(1))
    n = headers.get("Content-Length")
    return int(n) + have if n and str(n).isdigit() else None


def _bar(enabled: bool, total: int | None, initial: int, name: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, mininterval=2.0)


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a zip or tar archive into ``dest``, atomically: ``dest`` appears only complete.

    Members that would land outside ``dest`` (absolute paths, ``..``) are refused; links and
    devices in tar archives are skipped.
    """
    dest = Path(dest)
    with io.atomic_dir(dest) as tmp:
        _extract_into(Path(archive), tmp)
        (tmp / ".complete").write_text(Path(archive).name + "\n")
    return dest


def _extract_into(archive: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()

    def safe(name: str) -> None:
        p = (folder / name).resolve()
        if p != root and root not in p.parents:
            raise DownloadError(f"{archive}: member {name!r} would be written outside {folder}; refused")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                safe(m.filename)
            z.extractall(folder)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = []
            for m in t.getmembers():
                safe(m.name)
                if m.issym() or m.islnk() or m.isdev():
                    continue
                members.append(m)
            t.extractall(folder, members=members)
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive; delete it and download again")


def _fetch_and_extract(remotes: Sequence[Remote], root: Path, name: str, progress: bool) -> Path:
    """Download every archive (verified), then unpack them all into ``root/name`` atomically; once
    that folder exists (with its ``.complete`` marker) nothing is fetched again: offline from then on."""
    dest = root / name
    if (dest / ".complete").exists():
        return dest
    archives = [download(r, root / "archives", progress=progress) for r in remotes]
    with io.atomic_dir(dest) as tmp:
        for a in archives:
            _extract_into(a, tmp / a.name.split(".")[0])
        (tmp / ".complete").write_text("\n".join(r.filename for r in remotes) + "\n")
    return dest


def download_esc50(root: str | os.PathLike, progress: bool = True) -> Path:
    """ESC-50 under ``root/esc50``; returns the folder holding ``meta/esc50.csv`` and ``audio/``."""
    dest = _fetch_and_extract([ESC50], Path(root), "esc50", progress)
    found = sorted(dest.rglob("esc50.csv"))
    if not found:
        raise DownloadError(f"{dest} holds no meta/esc50.csv; delete {dest} and run again")
    return found[0].parent.parent


def download_voxconverse(root: str | os.PathLike, progress: bool = True) -> Path:
    """VoxConverse (dev + test audio, v0.3 RTTM annotations) under ``root/voxconverse``."""
    return _fetch_and_extract([VOXCONVERSE_RTTM, VOXCONVERSE_DEV, VOXCONVERSE_TEST], Path(root), "voxconverse", progress)
