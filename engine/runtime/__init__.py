"""Which runtime path runs a model here: measured, verified, remembered (choice.py, cache.py)."""


def module_found(name: str) -> bool:
    """Whether an optional package is installed, looked up without importing it (the extras:
    `--ray`, `serve` and the GPU paths say how to install what is missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
