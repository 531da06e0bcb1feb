"""Fetch the paper's datasets: ``python -m nucleiseg.data.download tnbc --dest data/``.

TNBC comes from its Zenodo record (Naylor et al., record 1175282): the archive's official
MD5 is read from the Zenodo API, the download resumes from a ``.part`` file, the checksum is
verified and the archive unpacked and checked (50 image/mask pairs). Lizard's CoNIC
release needs a licence click on the challenge site and CoNSeP has no scripted download, so
for them this prints where to get the files and where to put them. Without network access
every step fails at once with a message saying where to put the files by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

CHUNK = 1 << 20
TIMEOUT_S = 20


class DownloadError(RuntimeError):
    """A download failed; the message says how to get the files by hand."""


@dataclass(frozen=True)
class Release:
    name: str
    page: str
    api: str | None  # Zenodo API record (for the official file URL and checksum)
    archive: str | None
    folder: str
    manual: str  # what to do by hand


RELEASES = {
    "tnbc": Release(
        name="TNBC (Naylor et al. 2019), CC BY 4.0",
        page="https://zenodo.org/records/1175282",
        api="https://zenodo.org/api/records/1175282",
        archive="TNBC_NucleiSegmentation.zip",
        folder="TNBC_NucleiSegmentation",
        manual=(
            "download TNBC_NucleiSegmentation.zip from https://zenodo.org/records/1175282 "
            "and unzip it into {dest} (giving {dest}/TNBC_NucleiSegmentation/Slide_01, ...)"
        ),
    ),
    "lizard": Release(
        name="Lizard, CoNIC challenge release (Graham et al. 2021), CC BY-NC-SA 4.0",
        page="https://conic-challenge.grand-challenge.org/",
        api=None,
        archive=None,
        folder="conic",
        manual=(
            "the CoNIC release needs a licence agreement on "
            "https://conic-challenge.grand-challenge.org/ ; download its patch data and put "
            "images.npy, labels.npy and patch_info.csv into {dest}/conic, then train with "
            "dataset=lizard dataset.root={dest}/conic"
        ),
    ),
    "consep": Release(
        name="CoNSeP (Graham et al., HoVer-Net, Medical Image Analysis 2019), research use",
        page="https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/",
        api=None,
        archive=None,
        folder="consep",
        manual=(
            "CoNSeP's original (41 images of 1000x1000 px with .mat labels) is published by "
            "the TIA Centre, University of Warwick, at "
            "https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/ (no scripted download); "
            "nucleiseg reads it as 256 px tiles, 16 per image, as the shared copy "
            "../shared/data/consep holds it: {dest}/consep/{{train,test}}/{{images,masks,types}}/"
            "<split>_<image>_<tile>.{{jpg,png}} (JPEG images, uint16 instance maps, uint8 "
            "type maps); put the tiles there, then train with dataset=consep "
            "dataset.root={dest}/consep"
        ),
    ),
}


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, start: int = 0):
    request = urllib.request.Request(url, headers={"User-Agent": "nucleiseg"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def zenodo_file(api: str, key: str) -> tuple[str, str]:
    """Official download URL and MD5 of ``key`` in a Zenodo record."""
    with _open(api) as response:
        record = json.load(response)
    for entry in record.get("files", []):
        if entry.get("key") == key:
            checksum = str(entry.get("checksum") or "")
            if not checksum.startswith("md5:") or len(checksum) != len("md5:") + 32:
                raise DownloadError(
                    f"Zenodo record {api} gives no MD5 for '{key}' (got {checksum!r}); "
                    "download it by hand, or pass --url with --md5"
                )
            return entry["links"]["self"], checksum.removeprefix("md5:")
    raise DownloadError(f"Zenodo record {api} lists no file '{key}'")


def _skip(response, count: int, part: Path) -> None:
    while count > 0:
        chunk = response.read(min(CHUNK, count))
        if not chunk:
            raise DownloadError(f"'{part}' is longer than the file at the source; delete it")
        count -= len(chunk)


def fetch(url: str, target: Path, md5: str | None) -> Path:
    """Download ``url`` to ``target``, resuming ``target.part``; verify ``md5`` if given."""
    if target.is_file() and (md5 is None or md5sum(target) == md5):
        return target
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, start)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not start:
            raise
        # 416: nothing left past the end of the .part file, so it is complete: verify it
        return _verified(part, target, md5)
    with response:
        size = response.headers.get("Content-Length")
        total = int(size) if size else None
        if getattr(response, "status", None) == 206:
            total = start + (total or 0) if total else None
        elif start:  # the server ignored the Range header (or a file:// URL): skip what we have
            _skip(response, start, part)
        with (
            part.open("ab" if start else "wb") as out,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=target.name) as bar,
        ):
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    return _verified(part, target, md5)


def _verified(part: Path, target: Path, md5: str | None) -> Path:
    """Check a downloaded ``.part`` against ``md5`` (None: not checked) and move it in place."""
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for '{target.name}': expected md5 {md5}, got {got}; the "
                "partial file was removed, run the command again"
            )
    part.replace(target)
    return target


def unpack(archive: Path, dest: Path, folder: str) -> None:
    """Unzip ``archive`` into a temporary folder in ``dest`` and rename its ``folder`` into
    place: a crash mid-unzip never leaves a half dataset where the next run looks."""
    staging = dest / f".{folder}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = [n for n in zf.namelist() if n.startswith("/") or ".." in Path(n).parts]
            if bad:
                raise DownloadError(f"archive '{archive}' has unsafe paths such as {bad[0]}")
            zf.extractall(staging)
        if not (staging / folder).is_dir():
            raise DownloadError(f"archive '{archive}' holds no folder '{folder}'")
        (staging / folder).replace(dest / folder)
    except (zipfile.BadZipFile, OSError) as err:
        raise DownloadError(
            f"cannot unpack '{archive}' ({type(err).__name__}: {err}); delete it and run the "
            "command again"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(
    dataset: str,
    dest: str | Path,
    url: str | None = None,
    md5: str | None = None,
    verify: bool = True,
) -> Path:
    """Fetch, verify and unpack ``dataset`` into ``dest``; returns the dataset root.

    ``url`` (a mirror) needs its ``md5`` unless ``verify`` is False (``--no-verify``).
    """
    if dataset not in RELEASES:
        raise DownloadError(f"unknown dataset '{dataset}'; choose from {sorted(RELEASES)}")
    if url is not None and md5 is None and verify:
        raise DownloadError(
            "--url needs --md5 <the archive's MD5> so the download can be verified; pass "
            "--no-verify to take the file unchecked"
        )
    release = RELEASES[dataset]
    dest = Path(dest)
    manual = release.manual.format(dest=dest)
    root = dest / release.folder
    if release.archive is None:
        raise DownloadError(manual)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if url is None:
            url, md5 = zenodo_file(release.api, release.archive)
        archive = fetch(url, dest / release.archive, md5)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise DownloadError(
            f"cannot reach {url or release.api} ({err}); without network access, {manual}"
        ) from err
    if not root.is_dir():
        unpack(archive, dest, release.folder)
    if dataset == "tnbc":
        from nucleiseg.data.tnbc import find_tnbc_pairs

        count = len(find_tnbc_pairs(root))
        if count != 50:
            raise DownloadError(f"'{root}' holds {count} TNBC pairs, the release has 50; {manual}")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(RELEASES))
    parser.add_argument("--dest", default="data", help="folder to download into (default data/)")
    parser.add_argument("--url", help="download from this URL instead (e.g. a mirror, file://)")
    parser.add_argument("--md5", help="expected MD5 of the archive given with --url")
    parser.add_argument(
        "--no-verify", action="store_true", help="take a --url archive without an MD5 check"
    )
    args = parser.parse_args(argv)
    try:
        root = download(args.dataset, args.dest, args.url, args.md5, verify=not args.no_verify)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{RELEASES[args.dataset].name} ready in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
