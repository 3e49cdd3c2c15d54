"""A process forked after this one has decoded (a DataLoader worker, a multiprocessing pool) must
still decode: PyAV 18's default multi-threaded colour conversion hangs there forever."""

import glob
import multiprocessing
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = sorted(glob.glob(os.path.join(ROOT, "examples", "*.mp4")))[0]


def _decode(path, out):
    from xclip_engine.engine.video.reader import read_video

    out.put(read_video(path, num_frames=8, size=64).shape)


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the Linux default start method")
def test_a_forked_child_decodes_after_the_parent_did():
    from xclip_engine.engine.video.reader import read_video

    parent = read_video(EXAMPLE, num_frames=8, size=64)   # the parent converts frames first
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_decode, args=(EXAMPLE, out))
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung, "the forked child hung decoding (libswscale's slice threads do not survive fork)"
    assert child.exitcode == 0 and out.get(timeout=5) == parent.shape
