"""Dataset download against local file:// archives: checksum, resume, unpack, offline."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from nucleiseg.data.download import DownloadError, download, fetch, main, unpack
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
    code = main(["tnbc", "--dest", str(tmp_path), "--url", "http://nucleiseg.invalid/t.zip",
                 "--md5", "0" * 32])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "unzip it into" in err


def test_lizard_download_explains_the_licence_step(tmp_path, capsys):
    assert main(["lizard", "--dest", str(tmp_path)]) == 2
    assert "images.npy, labels.npy" in capsys.readouterr().err


def test_consep_download_says_where_it_is_published_and_that_the_copy_is_tiles(tmp_path, capsys):
    assert main(["consep", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "warwick.ac.uk" in err and "256 px tiles" in err
    assert f"{tmp_path}/consep/{{train,test}}/{{images,masks,types}}" in err


def test_a_mirror_url_without_md5_is_refused_unless_no_verify(tnbc_zip, tmp_path, capsys):
    archive, _ = tnbc_zip
    assert main(["tnbc", "--dest", str(tmp_path), "--url", archive.as_uri()]) == 2
    assert "--md5" in capsys.readouterr().err and not (tmp_path / archive.name).exists()
    assert main(["tnbc", "--dest", str(tmp_path), "--url", archive.as_uri(), "--no-verify"]) == 0


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves one file, answering a Range past its end with 416 as real servers do."""

    payload = b""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        if start >= len(self.payload):
            self.send_response(416)
            self.end_headers()
            return
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_complete_part_file_answered_416_is_verified_not_reported_offline(tmp_path):
    RangeHandler.payload = b"nuclei" * 1000
    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/archive.zip"
        (tmp_path / "archive.zip.part").write_bytes(RangeHandler.payload)  # crashed at the end
        md5 = hashlib.md5(RangeHandler.payload).hexdigest()
        assert fetch(url, tmp_path / "archive.zip", md5).read_bytes() == RangeHandler.payload
    finally:
        server.shutdown()


def test_an_interrupted_unzip_leaves_no_half_dataset(tmp_path):
    archive = tmp_path / "release.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("DATA/a.txt", "first member")
        zf.writestr("DATA/b.txt", "second member " * 100)
    data = bytearray(archive.read_bytes())
    at = data.index(b"second member")
    data[at : at + 6] = b"XXXXXX"  # the second member fails its CRC midway through the unzip
    archive.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DownloadError, match="cannot unpack"):
        unpack(archive, dest, "DATA")
    assert list(dest.iterdir()) == []  # neither DATA/ nor the staging folder


def test_a_zenodo_record_without_checksum_is_a_clear_error(tmp_path):
    import json

    from nucleiseg.data.download import zenodo_file

    record = tmp_path / "record.json"
    record.write_text(json.dumps({"files": [{"key": "x.zip", "checksum": "",
                                             "links": {"self": "file:///x.zip"}}]}))  # fmt: skip
    with pytest.raises(DownloadError, match="gives no MD5"):
        zenodo_file(record.as_uri(), "x.zip")
