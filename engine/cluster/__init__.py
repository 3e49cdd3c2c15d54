"""`xe.infer(..., ray=ADDRESS)` / `xclip-engine infer --ray ADDRESS`: the same run on Ray Data.

    connect.py        which Ray: "local" (a private one here), "auto" (RAY_ADDRESS), or an address
    inputs.py         manifests (a list file, a CSV or Parquet column) -> paths, on the driver
    stages.py         what the workers run: the decode tasks, the model actors, the part writers
    folder_output.py  --output FOLDER/: part files written by the workers, its lock, sidecar, resume
    ray_data.py       the dataset and its stages; rows back to the driver, in the plain run's order

Needs the `ray` extra: pip install 'xclip-engine[ray]'. Nothing here is imported without --ray.
"""

from __future__ import annotations

RAY_INSTALL = "pip install 'xclip-engine[ray]'"


def missing_modules() -> list[str]:
    """The packages `--ray` needs that are not installed (looked up without importing them)."""
    from ..runtime import module_found

    return [] if all(module_found(m) for m in ("ray", "ray.data", "pyarrow", "pandas")) else ["ray[data]"]


def check_installed() -> None:
    """Raise ImportError naming the install command when Ray Data is missing."""
    if missing_modules():
        raise ImportError(f"--ray (xe.infer ray=...) runs on Ray Data, which is not installed: `{RAY_INSTALL}`")


def parse_actors(value) -> tuple[int, int] | None:
    """--ray-actors "MIN:MAX" (or "N", or (MIN, MAX)) -> (MIN, MAX); None stays None (the default)."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = value.strip().split(":")
            if len(parts) not in (1, 2):
                raise ValueError
            low, high = int(parts[0]), int(parts[-1])
        elif isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        else:
            low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"ray_actors {value!r}: expected MIN:MAX model actors, e.g. 1:4 (or N)") from None
    if low < 1 or high < low:
        raise ValueError(f"ray_actors {value!r}: need MIN:MAX with 1 <= MIN <= MAX, e.g. 1:4")
    return low, high
