"""Small test videos written with PyAV: frames that carry their own index, and broken files.

Frame k of an index video shows k in base 8 as gray 16x16 blocks (the first DIGITS blocks in
raster order, levels 16 + 32 * digit), over a fixed colour gradient. Gray survives YUV 4:2:0
and lossy coding to within a few levels, far from the 16-level decision margin, so
``decode_index`` recovers k from any decoded frame of H.264, VP9 or MJPEG.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

BLOCK, DIGITS, BASE, LEVEL0, STEP = 16, 4, 8, 16, 32
CODECS = {  # our name -> (encoder, pixel format, encoder options)
    "h264": ("libx264", "yuv420p", {}),  # x264 defaults: B-frames, keyint 250 + scene cuts
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "good", "cpu-used": "8"}),
    "mjpeg": ("mjpeg", "yuvj420p", {}),
}


def _blocks(width: int, height: int) -> list[tuple[int, int]]:
    cols, rows = width // BLOCK, height // BLOCK
    if cols * rows < DIGITS:
        raise ValueError(f"{width}x{height} is too small for {DIGITS} {BLOCK}px index blocks")
    return [divmod(j, cols) for j in range(DIGITS)]  # (row, col)


def index_image(k: int, width: int = 64, height: int = 48) -> np.ndarray:
    """HxWx3 uint8 RGB frame that encodes ``k`` (0 <= k < 8**4)."""
    if not 0 <= k < BASE ** DIGITS:
        raise ValueError(f"index {k} does not fit in {DIGITS} base-{BASE} digits")
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    np.full_like(x, 128)], axis=-1).astype(np.uint8)
    for j, (r, c) in enumerate(_blocks(width, height)):
        digit = (k // BASE ** j) % BASE
        img[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = LEVEL0 + STEP * digit
    return img


def decode_index(frame_rgb: np.ndarray) -> int:
    """The index ``index_image`` wrote into a (decoded, not rotated) frame."""
    h, w = frame_rgb.shape[:2]
    k = 0
    for j, (r, c) in enumerate(_blocks(w, h)):
        inner = frame_rgb[r * BLOCK + 4:(r + 1) * BLOCK - 4, c * BLOCK + 4:(c + 1) * BLOCK - 4]
        level = float(np.median(inner.astype(np.float64).mean(axis=-1)))
        k += int(np.clip(round((level - LEVEL0) / STEP), 0, BASE - 1)) * BASE ** j
    return k


def write_index_video(path, num_frames: int, codec: str = "h264", size=(64, 48), fps: int = 30,
                      rotation: int | None = None, hflip: bool = False, vflip: bool = False,
                      options: dict | None = None, pts_ms: list[int] | None = None,
                      container_options: dict | None = None) -> str:
    """Write frames 0..num_frames-1 of ``index_image``; the container follows the extension.

    ``rotation`` (degrees counter-clockwise) / ``hflip`` / ``vflip`` store a display matrix;
    ``pts_ms`` gives each frame its own timestamp in milliseconds (variable frame rate).
    """
    encoder, pix_fmt, defaults = CODECS[codec]
    width, height = size
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {**defaults, **(options or {})}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_image(k, width, height), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[k], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return str(path)


def write_zero_byte(path) -> str:
    open(path, "wb").close()
    return str(path)


def write_text_as_video(path) -> str:
    with open(path, "w") as f:
        f.write("this is not a video, just text that happens to be named like one\n" * 20)
    return str(path)


def write_truncated_mp4(path, num_frames: int = 60, keep: float = 0.5, faststart: bool = False) -> str:
    """An H.264 MP4 cut short. Without faststart the index (moov) sits at the end and the cut
    (at ``keep`` of the file) loses it; with faststart the index survives in front and the cut
    falls at ``keep`` of the frame data (mdat), so the header claims frames that are gone."""
    opts = {"movflags": "faststart"} if faststart else {}
    write_index_video(path, num_frames, "h264", container_options=opts)
    with open(path, "rb") as f:
        data = f.read()
    start = data.index(b"mdat") if faststart else 0
    with open(path, "wb") as f:
        f.write(data[:start + int((len(data) - start) * keep)])
    return str(path)


def write_audio_only(path, seconds: float = 0.5, codec: str = "aac", rate: int = 44100) -> str:
    """A file with one audio stream (a sine tone) and no video stream."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = stream.codec_context.frame_size or 1024
        t0 = 0
        while t0 < seconds * rate:
            t = (np.arange(samples) + t0) / rate
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            fmt = stream.codec_context.format.name
            data = tone if fmt.startswith("flt") else (tone * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, t0
            out.mux(stream.encode(frame))
            t0 += samples
        out.mux(stream.encode())
    return str(path)


def write_empty_video_stream(path) -> str:
    """A Matroska file whose video stream holds no frames (an audio stream carries the data;
    MP4 would drop the empty track and an MKV with no data at all does not open)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mjpeg", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuvj420p"
        audio = out.add_stream("mp2", rate=44100)
        audio.layout = "mono"
        for k in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 44100, k * 1152
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return str(path)


def write_junk_video(path, num_packets: int = 10) -> str:
    """A Matroska file whose MJPEG video stream has timestamped packets of random bytes: the
    container opens and lists frames, but none of them decodes."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.codec_context.open()  # muxers need the codec parameters written before a packet
        for k in range(num_packets):
            packet = av.Packet(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts = stream, k, k
            packet.time_base = Fraction(1, 30)
            packet.is_keyframe = True
            out.mux(packet)
    return str(path)
