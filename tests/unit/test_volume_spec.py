"""-v parsing: named volumes, read-only host directories, and what is refused."""

from __future__ import annotations

import pytest

from kvmvm.errors import ConfigError
from kvmvm.images.volumes import VolumeSpec, check_unique_targets, parse_volume_spec


def test_named_volume(tmp_path):
    assert parse_volume_spec("data:/var/lib/data") == VolumeSpec("volume", "data", "/var/lib/data", False)
    assert parse_volume_spec("data:/x/:ro") == VolumeSpec("volume", "data", "/x", True)
    assert parse_volume_spec("my-vol.1:/x:rw,Z").readonly is False
    assert parse_volume_spec("db:/var/lib/db:direct") == VolumeSpec("volume", "db", "/var/lib/db", False, True)
    assert parse_volume_spec("db:/x:ro,direct") == VolumeSpec("volume", "db", "/x", True, True)
    assert parse_volume_spec("db:/x").direct is False


def test_host_dir_read_only(tmp_path):
    s = parse_volume_spec(f"{tmp_path}:/src:ro")
    assert s == VolumeSpec("hostdir", str(tmp_path), "/src", True)


@pytest.mark.parametrize("opts", ["", ":rw"])
def test_host_dir_read_write_refused(tmp_path, opts):
    with pytest.raises(ConfigError) as e:
        parse_volume_spec(f"{tmp_path}:/src{opts}")
    msg = str(e.value)
    assert "\n" not in msg
    assert ":ro" in msg and "named volume" in msg           # names both alternatives


@pytest.mark.parametrize("spec,why", [
    ("", "SOURCE:DEST"),
    ("/data", "anonymous"),
    ("data:relative", "absolute"),
    ("data:/", "root"),
    ("data:/a/../b", "'..'"),
    ("data:/x:ro,rw", "both"),
    ("data:/x:nosuid", "unknown option"),
    ("/etc:/x:ro,direct", "direct applies to named volumes"),
    ("data:/x:ro:extra", "too many"),
    ("-bad:/x", "not a valid volume name"),
    ("/no/such/kvmvm/dir:/x:ro", "no such directory"),
    ("/etc/hostname:/x:ro", "not a directory"),
])
def test_bad_specs(spec, why):
    with pytest.raises(ConfigError, match=__import__("re").escape(why)):
        parse_volume_spec(spec)


def test_relative_host_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    assert parse_volume_spec("./d:/d:ro").source == str(tmp_path / "d")


def test_unique_targets():
    check_unique_targets([parse_volume_spec("a:/x"), parse_volume_spec("b:/y")])
    with pytest.raises(ConfigError, match="two volumes"):
        check_unique_targets([parse_volume_spec("a:/x"), parse_volume_spec("b:/x/")])
