"""`crystalformer data download`: checksummed downloads from a local HTTP server (no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import subprocess
import threading
import zipfile

import pytest

from crystalformer import datasets
from crystalformer.cli import main
from crystalformer.datasets import Dataset, DownloadError, RemoteFile, download

CSV = b",material_id,cif\n0,mp-1,data_x\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(folder, base URL) of an HTTP server on localhost that serves the folder."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # keep the test output clean
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib would send even localhost requests through a proxy named in the environment."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _register(monkeypatch, name, *files):
    monkeypatch.setitem(datasets.REGISTRY, name, Dataset(name, "test", "here@0", "none", "none", tuple(files)))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_skips_files_already_present(server, tmp_path, monkeypatch):
    root, url = server
    (root / "a.csv").write_bytes(CSV)
    _register(monkeypatch, "toy", RemoteFile("train.csv", f"{url}/a.csv", sha256=_sha256(CSV), size=len(CSV)))
    assert download("toy", tmp_path, progress=False) == [tmp_path / "toy" / "train.csv"]
    assert (tmp_path / "toy" / "train.csv").read_bytes() == CSV
    (root / "a.csv").unlink()  # a second run must not need the server
    assert download("toy", tmp_path, progress=False) == [tmp_path / "toy" / "train.csv"]
    assert [p.name for p in (tmp_path / "toy").iterdir()] == ["train.csv"]  # no temporary files left


def test_git_blob_checksum_matches_git_hash_object(server, tmp_path, monkeypatch):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    root, url = server
    (root / "b.csv").write_bytes(CSV)
    blob = subprocess.run([git, "hash-object", str(root / "b.csv")], capture_output=True, text=True,
                          check=True).stdout.strip()
    _register(monkeypatch, "toy", RemoteFile("val.csv", f"{url}/b.csv", git_blob=blob))
    assert download("toy", tmp_path, progress=False)[0].read_bytes() == CSV
    _register(monkeypatch, "bad", RemoteFile("val.csv", f"{url}/b.csv", git_blob="0" * 40))
    with pytest.raises(DownloadError, match=f"git blob id mismatch: expected {'0' * 40}, got {blob}"):
        download("bad", tmp_path, progress=False)


@pytest.mark.parametrize("size, message", [
    (len(CSV), "sha256 mismatch: expected f{64}, got "),
    (len(CSV) + 1, f"size mismatch: expected {len(CSV) + 1} bytes, got {len(CSV)}"),
])
def test_checksum_mismatch_raises_and_leaves_no_file(server, tmp_path, monkeypatch, size, message):
    root, url = server
    (root / "c.csv").write_bytes(CSV)
    _register(monkeypatch, "toy", RemoteFile("train.csv", f"{url}/c.csv", sha256="f" * 64, size=size))
    with pytest.raises(DownloadError, match=f"train.csv from {url}/c.csv: {message}"):
        download("toy", tmp_path, progress=False)
    assert list((tmp_path / "toy").iterdir()) == []


def test_zip_archives_are_unpacked_without_their_top_folder(server, tmp_path, monkeypatch):
    root, url = server
    with zipfile.ZipFile(root / "toy.zip", "w") as zf:
        zf.writestr("toy/train.csv", CSV)
        zf.writestr("toy/val.csv", CSV * 2)
    data = (root / "toy.zip").read_bytes()
    _register(monkeypatch, "toy", RemoteFile("toy.zip", f"{url}/toy.zip", sha256=_sha256(data), size=len(data),
                                             unpack="zip"))
    files = download("toy", tmp_path, progress=False)
    assert files == [tmp_path / "toy" / "train.csv", tmp_path / "toy" / "val.csv"]
    assert [p.read_bytes() for p in files] == [CSV, CSV * 2]
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["toy.zip", "train.csv", "val.csv"]
    (tmp_path / "toy" / "val.csv").unlink()  # a lost member is restored from the kept archive
    assert download("toy", tmp_path, progress=False) == files and files[1].read_bytes() == CSV * 2


def test_network_failure_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.csv"
    _register(monkeypatch, "toy", RemoteFile("train.csv", missing.as_uri(), sha256=_sha256(CSV)))
    with pytest.raises(DownloadError, match="cannot download file://.*nowhere.csv.*download it by hand and put it"):
        download("toy", tmp_path / "out", progress=False)
    (tmp_path / "out" / "toy").mkdir(exist_ok=True)
    (tmp_path / "out" / "toy" / "train.csv").write_bytes(CSV)  # the manual download is accepted
    assert download("toy", tmp_path / "out", progress=False)[0].read_bytes() == CSV


def test_unknown_name_lists_the_known_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown data set 'mp20'; known: mp_20, mpts_52, perov_5, carbon_24"):
        download("mp20", tmp_path)
    assert main(["data", "download", "mp20", "--out", str(tmp_path)]) == 2
    assert "unknown data set mp20; known: mp_20, mpts_52" in capsys.readouterr().err


def test_cli_list_prints_the_registry(capsys):
    assert main(["data", "download", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "files", "size", "source"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["mp_20", "mpts_52", "perov_5", "carbon_24", "alex_mp_20"]
    assert "186.5 MB" in rows["alex_mp_20"] and rows["alex_mp_20"].endswith(
        "microsoft/mattergen@ac9ddd406171138c3f037d06b9b53fedbbb1c536")
    assert "train.csv, val.csv, test.csv" in rows["mp_20"] and "txie-93/cdvae@" in rows["mp_20"]


def test_cli_downloads_and_reports_failures_with_exit_code_1(server, tmp_path, monkeypatch, capsys):
    root, url = server
    (root / "d.csv").write_bytes(CSV)
    _register(monkeypatch, "toy", RemoteFile("train.csv", f"{url}/d.csv", sha256=_sha256(CSV)))
    assert main(["data", "download", "toy", "--out", str(tmp_path), "--quiet"]) == 0
    assert str(tmp_path / "toy" / "train.csv") in capsys.readouterr().out
    _register(monkeypatch, "toy", RemoteFile("train.csv", f"{url}/gone.csv", sha256="0" * 64))
    assert main(["data", "download", "toy", "--out", str(tmp_path), "--quiet"]) == 1
    assert f"cannot download {url}/gone.csv: HTTP Error 404" in capsys.readouterr().err
    assert main(["data", "download", "toy"]) == 2  # --out is needed to download


def test_registry_entries_are_pinned_and_checksummed():
    for dataset in datasets.REGISTRY.values():
        assert dataset.files and "@" in dataset.source
        commit = dataset.source.split("@")[1]
        for spec in dataset.files:
            assert spec.url.startswith("https://") and commit in spec.url, spec.url
            assert spec.sha256 or spec.git_blob
    with pytest.raises(ValueError, match="needs a sha256 or a git_blob"):
        RemoteFile("x.csv", "https://example.org/x.csv")
    with pytest.raises(ValueError, match="sha256 must be 64 lower-case hex digits"):
        RemoteFile("x.csv", "https://example.org/x.csv", sha256="ABC")
