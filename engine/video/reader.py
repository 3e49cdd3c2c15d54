"""Video files -> X-CLIP input: decode only the sampled frames with PyAV, then preprocess.

Official rules (microsoft/VideoX X-CLIP, commit 1744b21), implemented in two sibling modules:

* which frames: ``sampling`` (datasets/pipeline.py SampleFrames, datasets/build.py:287,
  299-300): test-time TSN ``int(i * n / T + n / (2T))``; several clips use the official random
  multi-view rule, seeded here.
* resize / crop / normalize and the view order: ``transforms`` (build.py:245, 285-298,
  pipeline.py Resize, CenterCrop, ThreeCrop, Normalize; main.py:203-220).

Decoding (ours; the official loader is decord, DecordInit/DecordDecode, pipeline.py:1766-1855,
which takes the frame count from ``len(VideoReader)`` (pipeline.py:1808) and fetches
``container[idx]`` for the sampled indices, frames in presentation order):

* Frame count = the video packets the demuxer can read, found by reading packets without
  decoding them. For MP4 this equals the header's frame count; for WebM/MKV (no count in the
  header) and truncated files it is the truth where the header is missing or wrong. Packets cut
  short by a truncation, or flagged to be discarded by an edit list, are not frames.
* Frame index = rank of the packet's pts among all pts (presentation order), so B-frame
  reordering and variable frame rates map exactly; decoded frames are matched by pts.
* Only what the sampled frames need is decoded: per group of targets, seek to the last keyframe
  at or before them (in decode order, with pts <= the target's, so open-GOP leading pictures go
  back one GOP more) and decode forward until the group's last target.
* Correctness first: when the pts are missing or repeated, or a target does not come out of the
  decoder (damaged data, a seek that landed wrongly, field-coded streams), decoding falls back to
  a plain pass from the start, indexing frames in output order. ``read_video`` then re-counts the
  frames that really decode and samples among those (a truncated file gives the frames that
  survived); ``read_frames`` raises ``VideoError`` for an index beyond them.
* Honesty about such answers: ``DecodeStats.frames_declared`` is the count the container claims
  (the header's, e.g. MP4's sample count, else the packets found when the file shows damage) next
  to ``frames_in_file``, the count the answer is sampled from; ``DecodeStats.warning`` words the
  difference for result rows. Stats reach callers that cannot pass ``stats=`` down (``read_clip``
  through DALI's planner, decode workers) through ``collect_stats``, per thread.
* Any pixel format becomes RGB24 via FFmpeg's swscale; the display matrix (rotation and flips,
  e.g. phone videos) is applied so frames are upright, as players and ffmpeg's autorotate show
  them (decord ignores it). The pixel aspect ratio is ignored, as decord does.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np

from .errors import REENCODE, TruncatedVideoWarning, VideoError, no_av_errors
from .sampling import sample_clip_indices, sample_indices, stride_indices
from .transforms import (
    MEAN,
    STD,
    center_crop,
    normalize,
    parse_views,
    preprocess,
    rescaled_size,
    resize_short_side,
    resize_target,
    three_crop,
    three_crop_offsets,
)

__all__ = [
    "MEAN", "STD", "DecodeStats", "TruncatedVideoWarning", "VideoError", "apply_display_matrix", "center_crop",
    "collect_stats", "count_frames", "normalize", "parse_views", "preprocess", "read_frames", "read_video",
    "rescaled_size", "resize_short_side", "resize_target", "sample_clip_indices", "sample_indices",
    "three_crop", "three_crop_offsets",
]

@dataclass
class DecodeStats:
    """Counters filled in by ``read_frames`` / ``read_video`` when passed ``stats=``."""

    frames_in_file: int = 0   # the frame count the indices refer to
    packets_scanned: int = 0  # packets read (not decoded) to count and index the frames
    frames_decoded: int = 0   # frames that came out of the decoder (the cost)
    seeks: int = 0
    full_passes: int = 0      # fallback decodes from the start
    decode_errors: int = 0    # packets the decoder rejected
    # The frame count the container claims (>= frames_in_file): its header's where it has one,
    # else the packets found, but only once the file showed damage (a corrupt packet, a demuxer
    # or decoder error); a healthy file's decoder may legitimately give fewer frames than packets.
    frames_declared: int = 0

    def warning(self, path=None) -> str | None:
        """A sentence for a result row when fewer frames are usable than the container declares
        (a truncated file still gets an answer, from the frames that survived); None otherwise."""
        n, declared = self.frames_in_file, self.frames_declared
        if not 0 < n < declared:
            return None
        where = f"{os.fspath(path)}: " if path is not None else ""
        return (f"{where}decoded {n} of the {declared} frames the container declares; the answer is from "
                f"those {n} (the file is truncated or damaged: re-encode or re-download it)")


# Stats for reads that happen below callers which cannot pass ``stats=`` (read_clip's DALI planner,
# decoder stand-ins in tests): one slot per thread, as decode workers are threads.
_collecting = threading.local()


@contextlib.contextmanager
def collect_stats(stats: DecodeStats | None):
    """Within the block, every video opened in this thread without its own ``stats=`` counts into
    ``stats`` (None: leave the current collector). The last file read sets ``frames_in_file`` and
    ``frames_declared``, which is the file the answer came from (a fallback reads last)."""
    if stats is None:
        yield None
        return
    before = getattr(_collecting, "stats", None)
    _collecting.stats = stats
    try:
        yield stats
    finally:
        _collecting.stats = before


class FrameMismatch(Exception):
    """A sampled frame did not come out of the decoder where the packet index said it would."""


def apply_display_matrix(img: np.ndarray, matrix) -> np.ndarray:
    """Rotate/flip a decoded HxWxC image upright by an FFmpeg display matrix (9 int32, 16.16).

    The matrix maps a source pixel (x, y) to display (a*x + c*y, b*x + d*y) with
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]; e.g. a 90 degree counter-clockwise
    display rotation (ffmpeg ``-display_rotation 90``) is a=d=0, b=-1, c=1. Angles that are not
    multiples of 90 degrees snap to the nearest one. ``None`` leaves the image as it is.
    """
    if matrix is None:
        return img
    a, b, _, c, d = (float(v) for v in list(matrix)[:5])
    if abs(a) + abs(d) >= abs(b) + abs(c):  # no transpose: identity, flips or 180 degrees
        out = img
        x_flip, y_flip = a < 0, d < 0
    else:  # a transpose: T[i, j] = img[j, i] realizes x' = y, y' = x
        out = img.transpose(1, 0, *range(2, img.ndim))
        x_flip, y_flip = c < 0, b < 0
    if x_flip:
        out = out[:, ::-1]
    if y_flip:
        out = out[::-1]
    return np.ascontiguousarray(out) if out is not img else img


def frame_matrix(frame):
    # Side data is optional metadata: never fail a decode because of it.
    with contextlib.suppress(Exception):
        sides = frame.side_data
        # PyAV 18: a mapping (iterating it gives the types); before: a sequence of the side data
        for side in sides.values() if hasattr(sides, "values") else sides:
            if getattr(side.type, "name", str(side.type)).endswith("DISPLAYMATRIX"):
                m = np.frombuffer(bytes(side), dtype=np.int32)
                return m if m.size >= 9 else None
    return None


# libswscale's conversion on one thread. PyAV 18 converts on a pool of slice threads by default
# (threads=0, "auto"), and a process forked after a conversion (a DataLoader worker, a
# multiprocessing pool) inherits the pool's state without its threads: its first conversion waits
# for them forever (seen in CI: evaluation's DataLoader workers hung in sws_scale_frame). Our
# decoders already run one clip per thread or process; older PyAV has no `threads` (always one).
_SWS_ONE_THREAD = {"threads": 1}


def _to_rgb(frame) -> np.ndarray:
    try:
        rgb = frame.to_ndarray(format="rgb24", **_SWS_ONE_THREAD)
    except TypeError:   # PyAV before `threads`: single-threaded already
        _SWS_ONE_THREAD.clear()
        rgb = frame.to_ndarray(format="rgb24")
    return apply_display_matrix(rgb, frame_matrix(frame))


class VideoFile:
    """One open video stream plus its packet index; a context manager."""

    def __init__(self, path, stats: DecodeStats | None = None):
        self.path = os.fspath(path)
        if stats is None:
            stats = getattr(_collecting, "stats", None)
        self.stats = stats if stats is not None else DecodeStats()
        if not os.path.exists(self.path):
            raise VideoError(self.path, "file not found; check the path")
        if not os.path.isfile(self.path):
            raise VideoError(self.path, "not a file (a directory?); pass the path of a video file")
        if os.path.getsize(self.path) == 0:
            raise VideoError(self.path, "the file is empty (0 bytes); copy or download it again")
        self.container = None
        self._open()
        try:
            self._scan()
        except BaseException:
            self.close()
            raise

    def _open(self, safe: bool = False) -> None:
        """(Re)open the file. ``safe``: no frame threading, which can silently drop the frames
        in flight when a damaged packet fails; used by the fallback passes."""
        self.close()
        try:
            self.container = av.open(self.path, metadata_errors="ignore")
        except Exception as e:  # noqa: BLE001 - FFmpeg, OS and format-probing errors alike
            raise VideoError(self.path, f"cannot be opened as a video ({e.__class__.__name__}: {e}); "
                             "it is damaged, truncated or not a video: download it again or "
                             + REENCODE) from None
        fmt = getattr(self.container.format, "name", "") or ""
        if fmt == "image2" or fmt.endswith("_pipe"):
            # FFmpeg's still-image demuxers (png_pipe, jpeg_pipe, ...) open a photo as a one-frame
            # "video"; classifying it as a video would answer silently for a file that is not one.
            self.close()
            raise VideoError(self.path, f"is a still image ({fmt.removesuffix('_pipe')}), not a video; "
                             "pass a video file")
        attached = int(getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0))
        streams = [s for s in self.container.streams.video if not int(s.disposition) & attached]
        if not streams:
            self.close()
            raise VideoError(self.path, "has no video stream (audio only?); pass a video file")
        self.stream = streams[0]
        self.stream.thread_type = "SLICE" if safe else "AUTO"
        for other in self.container.streams:
            if other is not self.stream:
                # Let the demuxer skip audio/subtitle data; an optimization only (older PyAV lacks it).
                with contextlib.suppress(Exception):
                    other.discard = av.stream.Discard.all

    def close(self) -> None:
        if getattr(self, "container", None) is not None:
            self.container.close()
            self.container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- index ---------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Read (not decode) every video packet: count frames, map pts -> presentation rank."""
        self.pts, self.dts, keys = [], [], []
        # What the container says it holds, for DecodeStats.frames_declared: MP4/MOV/AVI headers
        # count every sample, including those that are no frames (edit-list discards, AVI's empty
        # "drop" frames), so those are taken off again; 0 = no count in the header (WebM, MKV, TS).
        self.header_frames = max(int(self.stream.frames or 0), 0)
        not_frames, self.damaged = 0, False
        try:
            for pkt in self.container.demux(self.stream):
                if pkt.size == 0:
                    # the end-of-stream marker has no timestamps; an empty sample with them is a
                    # frame the header counts but that holds no picture
                    not_frames += pkt.pts is not None or pkt.dts is not None
                    continue
                if pkt.is_corrupt:
                    self.damaged = True  # a packet cut by truncation
                    continue
                if getattr(pkt, "is_discard", False):
                    not_frames += 1  # an edit-list cut: the header counts it, it is no frame
                    continue
                self.pts.append(pkt.pts)
                self.dts.append(pkt.dts)
                keys.append(bool(pkt.is_keyframe))
        except av.FFmpegError:
            self.damaged = True  # a damaged or truncated tail: the packets read so far are the video
        if self.header_frames:
            self.header_frames = max(self.header_frames - not_frames, 0)
        self.stats.packets_scanned += len(self.pts)
        self.keyframes = [i for i, k in enumerate(keys) if k]
        self.exact = bool(self.pts) and None not in self.pts and len(set(self.pts)) == len(self.pts)
        if self.exact:
            self.order = sorted(range(len(self.pts)), key=self.pts.__getitem__)  # rank -> packet
            self.rank = {self.pts[i]: r for r, i in enumerate(self.order)}
            self.pos_of_pts = {p: i for i, p in enumerate(self.pts)}
            self.num_frames = len(self.pts)
        else:
            self.num_frames = self.count_decodable()
        if self.num_frames == 0:
            raise VideoError(self.path, "has a video stream but no decodable frames; " + REENCODE)
        self.set_count(self.num_frames)

    def set_count(self, n: int) -> None:
        """Record ``n`` as the frame count the answer is sampled from, next to the declared one."""
        declared = self.header_frames
        if not declared and (self.damaged or self.stats.decode_errors):
            declared = len(self.pts)  # no header count: the packets are the claim, once damage showed
        self.stats.frames_in_file = n
        self.stats.frames_declared = max(declared, n)

    def _seek_packet(self, pos: int) -> int | None:
        """Packet to start decoding from for packet ``pos``: the last keyframe before it in decode
        order whose pts is not after it (None: no such keyframe, decode from the start)."""
        k = bisect.bisect_right(self.keyframes, pos) - 1
        while k >= 0 and self.pts[self.keyframes[k]] > self.pts[pos]:
            k -= 1
        return self.keyframes[k] if k >= 0 else None

    # -- decoding ------------------------------------------------------------------------------
    def _decode(self, packet):
        try:
            frames = self.stream.decode(packet)
        except av.FFmpegError:
            self.stats.decode_errors += 1  # skip a damaged packet, keep decoding the rest
            return []
        self.stats.frames_decoded += len(frames)
        return frames

    def _frames(self, packets=None):
        """Decoded frames from ``packets`` (default: the demuxer's current position) to the end."""
        try:
            for pkt in self.container.demux(self.stream) if packets is None else packets:
                yield from self._decode(pkt)  # the final empty packet flushes the decoder
        except av.FFmpegError:
            yield from self._decode(None)  # damaged tail: flush out what was decoded

    def _packets_from(self, key: int):
        """Demuxed packets starting at keyframe packet ``key`` or an earlier keyframe.

        Demuxers index by pts (MP4 through its edit list, MKV) or by dts, so we seek to the
        keyframe's pts and then its dts, and accept a landing only if the first packet read is
        not after the keyframe; otherwise (or for key -1) decode from the start of the file.
        """
        if key >= 0:
            for ts in dict.fromkeys(t for t in (self.pts[key], self.dts[key]) if t is not None):
                try:
                    self.container.seek(ts, stream=self.stream, backward=True)
                    self.stats.seeks += 1
                    packets = self.container.demux(self.stream)
                    first = next(packets, None)
                except av.FFmpegError:
                    continue
                landed = self.pos_of_pts.get(first.pts) if first is not None else None
                if landed is not None and landed <= key:
                    return itertools.chain([first], packets)
        self._open()
        return self.container.demux(self.stream)

    def _skip_unkept(self, packets, wanted_pts: set):
        """Pass ``packets`` on, letting the decoder drop the non-reference frames we do not keep.

        ``skip_frame = NONREF`` only skips frames no other frame predicts from, so every kept
        frame decodes bit-identically; the frames to keep are decoded with DEFAULT. FFmpeg's
        frame threads copy the setting when a packet is submitted. Should a decoder apply it
        late and drop a kept frame, ``read`` sees it missing and falls back to a full pass."""
        ctx = self.stream.codec_context
        try:
            for pkt in packets:
                ctx.skip_frame = "DEFAULT" if pkt.pts in wanted_pts else "NONREF"
                yield pkt
        finally:
            ctx.skip_frame = "DEFAULT"

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Frames at ``indices`` via the packet index and keyframe seeks; raises FrameMismatch."""
        if not self.exact:
            return self.read_sequential(indices)
        wanted = set(indices)
        wanted_pts = {self.pts[self.order[r]] for r in wanted}
        groups: dict[int, list[int]] = {}
        for r in sorted(wanted):
            start = self._seek_packet(self.order[r])
            groups.setdefault(-1 if start is None else start, []).append(r)
        got: dict[int, np.ndarray] = {}
        for start, ranks in sorted(groups.items()):
            if all(r in got for r in ranks):
                continue  # already decoded on the way to an earlier group
            last_pts = self.pts[self.order[ranks[-1]]]
            for frame in self._frames(self._skip_unkept(self._packets_from(start), wanted_pts)):
                r = self.rank.get(frame.pts)
                if r in wanted and r not in got:
                    got[r] = _to_rgb(frame)
                # Output is in presentation order: past the last target, a missing one is lost.
                if all(r in got for r in ranks) or (frame.pts is not None and frame.pts > last_pts):
                    break
            if not all(r in got for r in ranks):
                raise FrameMismatch
        return [got[i] for i in indices]

    def count_decodable(self) -> int:
        """Decode the whole stream once and count the frames that come out."""
        self._open(safe=True)
        self.stats.full_passes += 1
        return sum(1 for _ in self._frames())

    def read_sequential(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Frames at ``indices`` counted in decoder output order, decoding from the start."""
        self._open(safe=True)
        self.stats.full_passes += 1
        wanted, got, seen = set(indices), {}, 0
        for k, frame in enumerate(self._frames()):
            seen = k + 1
            if k in wanted:
                got[k] = _to_rgb(frame)
                if len(got) == len(wanted):
                    break
        if len(got) < len(wanted):
            if seen == 0:
                raise VideoError(self.path, "has a video stream but no decodable frames; " + REENCODE)
            raise VideoError(self.path, f"only {seen} frames decode but frame {max(wanted - set(got))} "
                             "was asked for; the file is damaged: " + REENCODE)
        return [got[i] for i in indices]


def _check_indices(video: VideoFile, indices: Sequence[int]) -> list[int]:
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i < video.num_frames]
    if bad:
        raise ValueError(f"{video.path}: frame indices {bad[:5]} out of range, the video has "
                         f"{video.num_frames} frames (0..{video.num_frames - 1})")
    return out


def count_frames(path) -> int:
    """Number of frames of the video's first video stream (what the sampling indices refer to).

    Counted from the packets without decoding them (a full decode only when the stream has no
    usable timestamps), so a stream whose packets are all undecodable still reports them; reading
    it raises ``VideoError``.
    """
    with no_av_errors(path), VideoFile(path) as video:
        return video.num_frames


def read_frames(path, indices: Sequence[int], *, stats: DecodeStats | None = None) -> list[np.ndarray]:
    """Decode the frames at 0-based presentation-order ``indices`` (any order, repeats allowed).

    Returns HxWx3 uint8 RGB arrays, upright, in the order of ``indices`` (a repeated index gives
    the same array object). Raises ``VideoError`` for unusable files and ``ValueError`` for an
    index outside ``0..count_frames(path) - 1``.
    """
    with no_av_errors(path), VideoFile(path, stats) as video:
        indices = _check_indices(video, indices)
        if not indices:
            return []
        try:
            return video.read(indices)
        except FrameMismatch:
            return video.read_sequential(indices)


def _read_sampled(video: VideoFile, sample) -> list[np.ndarray]:
    """The frames at ``sample(n)`` (flat indices for a video of n frames), with the fallback when
    the packet index promised frames the decoder did not deliver: count the frames that really
    decode and sample among those."""
    flat = sample(video.num_frames)
    try:
        return video.read(flat)
    except FrameMismatch:
        n = video.count_decodable()
        if n == 0:
            raise VideoError(video.path, "has a video stream but no decodable frames; " + REENCODE) from None
        video.set_count(n)
        return video.read_sequential(sample(n))


def read_video(path, num_frames: int | None = None, size: int | None = None, views: str | None = None, *,
               seed: int | None = 0, mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
               stats: DecodeStats | None = None, preprocessing: dict | None = None) -> np.ndarray:
    """A video file -> model input ``[V, num_frames, 3, size, size]`` float32, V = clips x crops.

    Without ``preprocessing`` (or with an X-CLIP spec, ``engine.config.xclip_preprocessing``):
    X-CLIP's official rules (num_frames 8, size 224 by default). ``views``: "1x1" (official single
    view, the default), "4x3" (official multi-view: 4 clips x 3 crops, V = 12) or any "Nx1" /
    "Nx3". View ``v`` is crop ``v // N`` of clip ``v % N``; for "4x3" views 0-3 are the left (top)
    crops, 4-7 the right (bottom), 8-11 the middle ones. Average the softmax scores of the views.
    With N > 1 every clip follows the official random multi-view rule, drawn from ``seed``
    (``None``: fresh randomness); N = 1 is deterministic.

    With an EVL spec (``engine.video.preprocessing.evl_preprocessing``): EVL's rules
    (docs/preprocessing.md §7-§9): ``views`` "NxM" = N temporal views x M crops (default: the
    spec's ``views``, else "1x1"); ``num_frames`` / ``size``, if given, must equal the spec's.
    ``mean`` / ``std`` / ``seed`` are X-CLIP's arguments (the spec holds EVL's statistics).
    """
    if preprocessing is not None:
        from .preprocessing import resolve

        spec, num_frames, size, views = resolve(preprocessing, num_frames, size, views)
        if spec.family == "evl":
            return _read_evl(path, spec, views, stats)
    num_frames = 8 if num_frames is None else num_frames
    size = 224 if size is None else size
    views = "1x1" if views is None else views
    num_clips, _ = parse_views(views)
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    with no_av_errors(path), VideoFile(path, stats) as video:
        frames = _read_sampled(video, lambda n: [i for clip in sample_clip_indices(n, num_frames, num_clips, seed)
                                                 for i in clip])
    return preprocess(frames, size=size, views=views, mean=mean, std=std)


def _read_evl(path, spec, views: str, stats: DecodeStats | None) -> np.ndarray:
    """EVL: stride-sampled clips (``sampling.stride_indices``), one decode of the distinct frames
    all views need (seeking where the packet index allows, stopping after the last one), then
    ``evl_transforms.preprocess_evl``."""
    from .evl_transforms import preprocess_evl

    num_clips, _ = parse_views(views)
    with no_av_errors(path), VideoFile(path, stats) as video:
        frames = _read_sampled(video, lambda n: [i for clip in stride_indices(n, spec.num_frames, spec.stride,
                                                                                num_clips) for i in clip])
    return preprocess_evl(frames, size=spec.crop, views=views, mean=spec.mean, std=spec.std,
                          resize_short_side=spec.resize_short_side)
