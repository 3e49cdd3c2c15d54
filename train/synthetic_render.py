"""One clip of the synthetic "shapes" data set: sample its parameters, render it, encode it.

A clip shows one coloured shape (circle, square, triangle) on a plain or lightly textured,
static background, optionally over a few static neutral distractor shapes. Its class is
colour x shape x motion, and the motion must not be readable from any single frame.

How single frames are kept ambiguous (our design, no external source): every clip draws the
SAME random parameters whatever its motion. Each animatable quantity q in (x, y, log size,
angle) gets a centre c_q, a span d_q and a static offset w_q ~ U(-1/2, 1/2); at frame t its value
is ``c_q + d_q * w_q(t)``. The motion only decides which quantity moves: for it
``w_q(t) = direction * u_t`` with ``u_t`` running evenly from -1/2 to 1/2 over the clip, for the
others ``w_q(t) = w_q``. A random frame of any clip therefore has the same distribution of
position, size and angle whatever the motion (up to the evenly spaced u_t), and each motion with
a direction has a twin, the time reversal (left/right, up/down, grow/shrink), that shows exactly
the same frames in the opposite order. A blinking clip shows the shape still, or nothing at
all, on a given frame: the first is a possible frame of every other motion, the second tells
neither colour nor shape. Bounds use the largest extent any clip can reach, so where a shape may
be does not depend on its motion either.

Every length is a fraction of the frame size S, so ``size`` rescales the whole data set. Shapes
stay PAD * S away from each border: X-CLIP's single-view test crop removes 1 - 224/256 of the
short side, 6.25% on each side.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import cv2
import numpy as np

# Target colours (RGB). Backgrounds are low-saturation greys and distractors neutral, so no
# background or distractor pixel looks like a target colour.
COLOURS = {"red": (215, 45, 45), "green": (45, 175, 70), "blue": (45, 95, 225), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
MOTIONS = {  # key (CLI) -> words in the label
    "left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
    "grow": "growing", "shrink": "shrinking", "rotate": "rotating", "blink": "blinking",
}
# motion -> (animated quantity, direction); rotation turns either way (None: drawn per clip).
ANIMATES = {"left": ("x", -1), "right": ("x", 1), "up": ("y", -1), "down": ("y", 1),
            "grow": ("logsize", 1), "shrink": ("logsize", -1), "rotate": ("angle", None), "blink": (None, 0)}
TWIN = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow",
        "rotate": "rotate"}

# Geometry, as fractions of the frame size S. "size" s: circumradius of the square; the circle's
# radius is 0.8 s (same area as the square), the triangle's circumradius 1.1 s.
EXTENT = {"circle": 0.8, "square": 1.0, "triangle": 1.1}
SIDES = {"square": 4, "triangle": 3}
PAD = 0.07
# Shapes are large and near upright, and motions long, because the small ViT of the bundled model,
# trained from scratch, learns what it must see slowly (a single-frame probe, the vision tower
# and a linear head naming the shape: at the earlier sizes, 10-13% of the frame at any angle, it
# stayed under 45% on held-out frames; at these sizes, upright, it reached 78% in 1,200 updates
# of 64 fresh frames, and 70% at any angle). A rotating clip turns through the upright pose.
SIZE_MID = (0.16, 0.19)                      # size at mid-clip
LOG_SPAN = (math.log(1.5), math.log(1.7))    # growth factor over a clip
MOVE_SPAN = (0.26, 0.31)                     # distance travelled over a clip
TURN_SPAN = (40.0, 50.0)                     # degrees turned over a clip
UPRIGHT = {"circle": 0.0, "square": 45.0, "triangle": -90.0}  # angle of the flat-bottomed pose
ANGLE_JITTER = 5.0                           # degrees either side of upright at mid-clip
BLINK_CYCLES = (1.0, 2.0)                    # on/off cycles per clip: whole runs last >= T/4 frames
MAX_SIZE = SIZE_MID[1] * math.exp(LOG_SPAN[1] / 2)
LO = PAD + max(EXTENT.values()) * MAX_SIZE   # where a shape's centre may be: [LO, 1 - LO]
COLOUR_JITTER = 20
DISTRACTOR_COLOURS = ((240, 240, 240), (25, 25, 25))
MIN_SIZE_PX, MIN_FRAMES = 32, 8
SUBPIXEL = 4                                 # cv2 fixed-point bits: positions in 1/16 px
assert 1 - 2 * LO >= MOVE_SPAN[1], "the frame has no room for the longest move"


@dataclass(frozen=True)
class Track:
    """One quantity: value(t) = centre + span * w(t); w(t) = direction * u_t if animated, else w."""

    centre: float
    span: float
    w: float


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a clip's frames; ``sample_spec`` draws one from an RNG."""

    colour: str
    shape: str
    motion: str
    size: int                  # frame width = height, pixels
    frames: int
    rgb: tuple[int, int, int]  # drawn colour (the class colour plus jitter)
    x: Track                   # fractions of the size
    y: Track
    logsize: Track             # log of the size fraction
    angle: Track               # degrees
    direction: int             # +1 / -1 for the animated quantity, 0 for blinking
    blink_cycles: float
    blink_phase: float
    background: tuple          # ("plain" | "textured", (r, g, b), texture seed)
    distractors: tuple = ()    # ((shape, rgb, x, y, size, angle), ...) in fractions of the size


def check_geometry(size: int, frames: int) -> None:
    if int(size) < MIN_SIZE_PX or int(size) % 2:
        raise ValueError(f"--size {size}: clips must be an even number (H.264 4:2:0) of at least {MIN_SIZE_PX} "
                         "px, or the smallest shapes are only a few pixels; use e.g. --size 64")
    if int(frames) < MIN_FRAMES:
        raise ValueError(f"--frames {frames}: clips need at least {MIN_FRAMES} frames so that every motion "
                         "(and every blink run) spans several frames; use e.g. --frames 24")


def _track(rng: np.random.Generator, span: float, lo: float, hi: float) -> Track:
    # The centre leaves room for the whole span, so the value stays in [lo, hi] at every frame.
    return Track(float(rng.uniform(lo + span / 2, hi - span / 2)), span, float(rng.uniform(-0.5, 0.5)))


def sample_spec(rng: np.random.Generator, colour: str, shape: str, motion: str, size: int, frames: int,
                distractors: int = 0) -> ClipSpec:
    """Draw a clip of class (colour, shape, motion). The draws do not depend on the motion."""
    if colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS:
        raise ValueError(f"unknown class ({colour}, {shape}, {motion}); colours {list(COLOURS)}, "
                         f"shapes {list(SHAPES)}, motions {list(MOTIONS)}")
    check_geometry(size, frames)
    rgb = tuple(int(v) for v in np.clip(np.add(COLOURS[colour], rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)),
                                        0, 255))
    x = _track(rng, float(rng.uniform(*MOVE_SPAN)), LO, 1 - LO)
    y = _track(rng, float(rng.uniform(*MOVE_SPAN)), LO, 1 - LO)
    log_span = float(rng.uniform(*LOG_SPAN))
    logsize = Track(float(np.log(rng.uniform(*SIZE_MID))), log_span, float(rng.uniform(-0.5, 0.5)))
    angle = Track(UPRIGHT[shape] + float(rng.uniform(-ANGLE_JITTER, ANGLE_JITTER)), float(rng.uniform(*TURN_SPAN)),
                  float(rng.uniform(-0.5, 0.5)))
    turn = 1 if rng.random() < 0.5 else -1
    cycles, phase = float(rng.uniform(*BLINK_CYCLES)), float(rng.random())
    grey = float(rng.uniform(60, 200))
    tint = tuple(int(np.clip(grey + d, 0, 255)) for d in rng.integers(-12, 13, 3))
    background = ("textured" if rng.random() < 0.5 else "plain", tint, int(rng.integers(2**31)))
    extras = []
    for _ in range(int(distractors)):
        extras.append((SHAPES[int(rng.integers(len(SHAPES)))], DISTRACTOR_COLOURS[int(rng.integers(2))],
                       float(rng.uniform(LO, 1 - LO)), float(rng.uniform(LO, 1 - LO)),
                       float(rng.uniform(SIZE_MID[0], SIZE_MID[1])), float(rng.uniform(0, 360))))
    _, direction = ANIMATES[motion]
    return ClipSpec(colour, shape, motion, int(size), int(frames), rgb, x, y, logsize, angle,
                    turn if direction is None else direction, cycles, phase, background, tuple(extras))


def time_u(frames: int) -> np.ndarray:
    """u_t from -1/2 to 1/2, computed so that u_{T-1-t} == -u_t exactly (twins show equal frames)."""
    num = 2 * np.arange(frames, dtype=np.float64) - (frames - 1)
    return num / (2 * (frames - 1))


def states(spec: ClipSpec) -> dict[str, np.ndarray]:
    """Per frame: x, y (pixels), s (size, pixels), angle (degrees), visible (bool); arrays [T]."""
    u = time_u(spec.frames)
    animated, _ = ANIMATES[spec.motion]
    out = {}
    for name in ("x", "y", "logsize", "angle"):
        tr = getattr(spec, name)
        w = spec.direction * u if name == animated else np.full(spec.frames, tr.w)
        out[name] = tr.centre + tr.span * w
    if spec.motion == "blink":
        # Duty cycle 1/2, 1-2 cycles per clip: both states occur; runs not cut by the clip's ends last >= T/4 frames.
        visible = np.mod(spec.blink_cycles * np.arange(spec.frames) / spec.frames + spec.blink_phase, 1.0) < 0.5
    else:
        visible = np.ones(spec.frames, bool)
    return {"x": out["x"] * spec.size, "y": out["y"] * spec.size, "s": np.exp(out["logsize"]) * spec.size,
            "angle": out["angle"], "visible": visible}


def twin(spec: ClipSpec) -> ClipSpec:
    """The time-reversed clip: frame t of the twin is frame T-1-t of ``spec``; its class has the
    opposite motion (left <-> right, up <-> down, grow <-> shrink; rotation turns the other way)."""
    if spec.motion not in TWIN:
        raise ValueError(f"motion {spec.motion!r} has no time-reversed twin class")
    return replace(spec, motion=TWIN[spec.motion], direction=-spec.direction)


def draw_shape(img: np.ndarray, shape: str, cx: float, cy: float, s: float, angle: float, rgb) -> None:
    """Fill ``shape`` of size ``s`` (pixels) centred at (cx, cy), antialiased, into ``img``."""
    one = 1 << SUBPIXEL
    colour = tuple(int(v) for v in rgb)
    if shape == "circle":
        centre = (int(round(cx * one)), int(round(cy * one)))
        cv2.circle(img, centre, int(round(EXTENT["circle"] * s * one)), colour, -1, cv2.LINE_AA, SUBPIXEL)
        return
    n = SIDES[shape]
    theta = np.deg2rad(angle + 360.0 * np.arange(n) / n)
    r = EXTENT[shape] * s
    pts = np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)
    cv2.fillPoly(img, [np.round(pts * one).astype(np.int32)], colour, cv2.LINE_AA, SUBPIXEL)


def render_background(spec: ClipSpec) -> np.ndarray:
    kind, tint, seed = spec.background
    n = spec.size
    img = np.empty((n, n, 3), np.float32)
    img[:] = tint
    if kind == "textured":  # a gentle gradient plus blurred noise: a few grey levels, static
        rng = np.random.default_rng(seed)
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:n, 0:n] / n - 0.5
        img += (rng.uniform(10, 25) * (np.cos(a) * xx + np.sin(a) * yy))[..., None]
        noise = cv2.GaussianBlur(rng.normal(0, 1, (n, n)).astype(np.float32), (0, 0), n / 24)
        img += (noise / (noise.std() + 1e-6) * rng.uniform(3, 7))[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """The clip's frames, uint8 RGB [T, S, S, 3]."""
    base = render_background(spec)
    n = spec.size
    for shape, rgb, x, y, s, angle in spec.distractors:  # static, under the target
        draw_shape(base, shape, x * n, y * n, s * n, angle, rgb)
    st = states(spec)
    frames = np.repeat(base[None], spec.frames, axis=0)
    for t in range(spec.frames):
        if st["visible"][t]:
            draw_shape(frames[t], spec.shape, st["x"][t], st["y"][t], st["s"][t], st["angle"][t], spec.rgb)
    return frames


@functools.lru_cache(maxsize=1)
def x264_options() -> dict[str, str]:
    """libx264 options that make the same frames give the same file.

    One thread: clips are encoded in parallel processes anyway. On CPUs with AVX-512, x264's
    AVX-512 code paths (the PyAV wheel's x264, core 165) gave different bytes for the same input
    now and then (measured: 4 of 36 clips in 20 repeats), its AVX2 paths never did, and they
    give the same bytes as its SSE4.2 paths: so there x264 is held to AVX2, which also matches
    what an AVX2-only machine writes. Only done where /proc/cpuinfo shows AVX-512, since naming
    a SIMD level that the CPU lacks would crash x264.
    """
    options = {"preset": "medium", "threads": "1"}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if {"avx2", "avx512f", "avx512bw"} <= set(flags):
        options["x264-params"] = "asm=AVX2,Cache64"
    return options


def encode_mp4(frames: np.ndarray, path, fps: int, crf: int = 18) -> None:
    """H.264 (libx264, yuv420p) in MP4, deterministic (see ``x264_options``)."""
    _, h, w, _ = frames.shape
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(int(fps), 1))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {**x264_options(), "crf": str(crf)}
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, int(fps))  # explicit: x264's rate control reads them
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
