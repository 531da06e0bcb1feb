"""Dataset download against local file:// archives: checksum, resume, unpack, offline."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from nucleiseg.data.download import DownloadError, download, main
from nucleiseg.data.tnbc import TNBCDataset


@pytest.fixture(scope="module")
def tnbc_zip(tnbc_root, tmp_path_factory) -> tuple[Path, str]:
    """The real TNBC release zipped as Zenodo serves it, and its MD5."""
    archive = tmp_path_factory.mktemp("mirror") / "TNBC_NucleiSegmentation.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(tnbc_root.rglob("*.png")):
            zf.write(path, Path("TNBC_NucleiSegmentation") / path.relative_to(tnbc_root))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_and_unpacks_a_loadable_release(tnbc_zip, tmp_path):
    archive, md5 = tnbc_zip
    root = download("tnbc", tmp_path, url=archive.as_uri(), md5=md5)
    assert root == tmp_path / "TNBC_NucleiSegmentation"
    assert len(TNBCDataset(str(root)).pairs) == 50


def test_download_resumes_from_a_partial_file(tnbc_zip, tmp_path):
    archive, md5 = tnbc_zip
    data = archive.read_bytes()
    (tmp_path / "TNBC_NucleiSegmentation.zip.part").write_bytes(data[: len(data) // 3])
    download("tnbc", tmp_path, url=archive.as_uri(), md5=md5)
    assert (tmp_path / "TNBC_NucleiSegmentation.zip").read_bytes() == data


def test_checksum_mismatch_is_an_error_and_leaves_nothing_unpacked(tnbc_zip, tmp_path):
    archive, _ = tnbc_zip
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("tnbc", tmp_path, url=archive.as_uri(), md5="0" * 32)
    assert not (tmp_path / "TNBC_NucleiSegmentation").exists()


def test_offline_download_fails_at_once_saying_where_to_put_files(tmp_path, capsys):
    code = main(["tnbc", "--dest", str(tmp_path), "--url", "http://nucleiseg.invalid/t.zip"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "unzip it into" in err


def test_lizard_download_explains_the_licence_step(tmp_path, capsys):
    assert main(["lizard", "--dest", str(tmp_path)]) == 2
    assert "images.npy, labels.npy" in capsys.readouterr().err
