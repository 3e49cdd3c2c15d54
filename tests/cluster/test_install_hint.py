"""Without Ray Data, `--ray` says how to install it (runs whether or not Ray is installed)."""

import pytest
from click.testing import CliRunner

import xclip_engine as xe
from xclip_engine.engine import cluster
from xclip_engine.engine.cli import main


def test_without_ray_the_install_command_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "missing_modules", lambda: ["ray[data]"])
    (tmp_path / "a.mp4").write_bytes(b"")
    r = CliRunner().invoke(main, ["infer", str(tmp_path), "--ray", "local"])
    assert r.exit_code == 2 and "pip install 'xclip-engine[ray]'" in r.output
    with pytest.raises(ImportError, match=r"pip install 'xclip-engine\[ray\]'"):
        xe.infer([tmp_path], ray="local")


def test_ray_actors_are_checked(tmp_path):
    from xclip_engine.engine.cluster import parse_actors

    assert parse_actors("1:4") == (1, 4) and parse_actors("3") == (3, 3) and parse_actors((2, 2)) == (2, 2)
    for bad in ("0:2", "3:1", "a:b", "1:2:3"):
        with pytest.raises(ValueError, match="MIN:MAX"):
            parse_actors(bad)
    r = CliRunner().invoke(main, ["infer", str(tmp_path), "--ray-actors", "1:2"])
    assert r.exit_code == 2 and "--ray ADDRESS" in r.output
    r = CliRunner().invoke(main, ["infer", str(tmp_path), "--format", "parquet", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--ray" in r.output
