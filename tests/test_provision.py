"""Getting ComfyUI when none is given: from a source archive or git, once, into the user's cache.

The archives here are cut from the real ComfyUI the suite runs on (the files that make a
checkout recognisable), so the checks see ComfyUI's own layout and version file.
"""

import io
import tarfile

import pytest
import thirdparty

from cli import comfy_host
from cli import provision_comfyui as provision

HOST_PATH = comfy_host.find_comfyui()

MARKERS = ("main.py", "nodes.py", "folder_paths.py", "comfy/sd.py", "comfyui_version.py")


def write_archive(path, version_text=None, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        for name in MARKERS:
            data = (HOST_PATH / name).read_bytes()
            if name == "comfyui_version.py" and version_text is not None:
                data = version_text.encode()
            info = tarfile.TarInfo(f"ComfyUI/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in extra:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.delenv("BKSDM_COMFYUI_VERSION", raising=False)
    return tmp_path / "cache" / "bk-sdm-comfyui"


def test_host_is_a_supported_release():
    assert provision.comfyui_version(HOST_PATH) in provision.SUPPORTED


def test_archive_is_unpacked_once_outside_the_project(cache, tmp_path, monkeypatch):
    version = provision.comfyui_version(HOST_PATH)
    archive = write_archive(tmp_path / "comfy.tar.gz")
    monkeypatch.setenv("BKSDM_COMFYUI_VERSION", version)
    monkeypatch.setenv("COMFYUI_SOURCE", str(archive))
    path = provision.find_or_provision()
    assert path == provision.provisioned_path(version) and path.parent == cache
    assert provision.is_comfyui(path) and (path / "main.py").read_bytes() == (HOST_PATH / "main.py").read_bytes()
    assert provision.PACK_DIR not in path.parents
    archive.unlink()  # a second set-up uses what is there
    assert provision.find_or_provision() == path
    assert [p.name for p in cache.iterdir()] == [path.name]  # no staging folder left


def test_archive_of_another_release_is_refused_and_leaves_nothing(cache, tmp_path, monkeypatch):
    archive = write_archive(tmp_path / "comfy.tar.gz", version_text='__version__ = "0.1.0"\n')
    monkeypatch.setenv("COMFYUI_SOURCE", str(archive))
    with pytest.raises(provision.ProvisionError, match=r"holds ComfyUI 0\.1\.0, expected " + provision.NEWEST):
        provision.find_or_provision()
    assert list(cache.iterdir()) == []


def test_archive_member_leaving_the_folder_is_refused(cache, tmp_path, monkeypatch):
    archive = write_archive(tmp_path / "comfy.tar.gz", extra=["../../escaped.txt"])
    monkeypatch.setenv("BKSDM_COMFYUI_VERSION", provision.comfyui_version(HOST_PATH))
    monkeypatch.setenv("COMFYUI_SOURCE", str(archive))
    with pytest.raises((provision.ProvisionError, tarfile.TarError)):
        provision.find_or_provision()
    assert not (tmp_path / "escaped.txt").exists() and not (cache.parent / "escaped.txt").exists()
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("source, message", [
    ("{tmp}/not-an-archive.txt", "not a readable ComfyUI source archive"),
    ("nonsense", "neither a file nor a git URL"),
    ("file://{tmp}/no-such-repository", "could not fetch ComfyUI"),
])
def test_bad_source_says_what_to_set(cache, tmp_path, monkeypatch, source, message):
    (tmp_path / "not-an-archive.txt").write_text("hello")
    monkeypatch.setenv("COMFYUI_SOURCE", source.format(tmp=tmp_path))
    with pytest.raises(provision.ProvisionError, match=message) as error:
        provision.find_or_provision()
    assert "COMFYUI_SOURCE" in str(error.value) or "COMFYUI_PATH" in str(error.value)


def test_given_path_and_version_are_checked(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(provision.ProvisionError, match="is not a ComfyUI checkout"):
        provision.find_or_provision()
    monkeypatch.setenv("COMFYUI_PATH", str(HOST_PATH))
    assert provision.find_or_provision() == HOST_PATH.resolve()
    monkeypatch.delenv("COMFYUI_PATH")
    monkeypatch.setenv("BKSDM_COMFYUI_VERSION", "0.0.1")
    with pytest.raises(provision.ProvisionError, match="not a supported ComfyUI release"):
        provision.find_or_provision()


def test_command_prints_the_path_or_fails_with_the_reason(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COMFYUI_PATH", str(HOST_PATH))
    assert provision.main([]) == 0
    assert capsys.readouterr().out == f"{HOST_PATH.resolve()}\n"
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert provision.main([]) == 1
    assert capsys.readouterr().out == ""


def test_third_party_packs_come_from_their_pinned_archive_once(cache, tmp_path, monkeypatch):
    name = next(iter(thirdparty.PACKS))
    (commit,) = thirdparty.commits(name)
    archives = tmp_path / "archives"
    archives.mkdir()
    with pytest.raises(provision.ProvisionError, match=f"has no {name}-{commit[:8]}.tar.gz"):
        thirdparty.provision(name, commit, str(archives))
    source = tmp_path / "src" / name
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    with tarfile.open(archives / f"{name}-{commit[:8]}.tar.gz", "w:gz") as tar:
        tar.add(source, arcname=name)
    path = thirdparty.provision(name, commit, str(archives))
    assert path == thirdparty.pack_path(name, commit) and (path / "__init__.py").is_file()
    (archives / f"{name}-{commit[:8]}.tar.gz").unlink()
    assert thirdparty.provision(name, commit, str(archives)) == path  # fetched once: no archive needed again
