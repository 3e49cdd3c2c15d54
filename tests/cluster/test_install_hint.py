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


def test_decode_blocks_are_few_but_spread_and_bounded_in_bytes():
    from xclip_engine.engine.cluster.ray_data import DECODE_BLOCK_BYTES, decode_block_size
    from xclip_engine.engine.video.preprocessing import evl_preprocessing

    small = dict(num_frames=8, size=64, views="1x1")           # 393 KB a clip
    assert decode_block_size(2000, 8, 2, small) == 32           # 4 batches a task: Ray's cost per task paid less often
    assert decode_block_size(200, 8, 2, small) == 25            # still 4 blocks per decode worker
    assert decode_block_size(10, 8, 2, small) == 2              # a tiny run: spread over the workers
    b32 = dict(num_frames=8, size=224, views="1x1")             # 4.8 MB a clip
    assert decode_block_size(10**6, 8, 64, b32) == DECODE_BLOCK_BYTES // (8 * 3 * 224 * 224 * 4)
    assert decode_block_size(10**6, 8, 64, dict(b32, views="4x3")) == 1   # 58 MB a clip: one per task
    evl = dict(views="3x1", preprocessing=evl_preprocessing(8, 16))        # 3 views of 8 x 224 px
    assert decode_block_size(10**6, 16, 8, evl) == DECODE_BLOCK_BYTES // (3 * 8 * 3 * 224 * 224 * 4)
