"""`xclip-engine serve`: X-CLIP (and EVL) over HTTP, a FastAPI app on a Ray Serve deployment with dynamic batching.

    app.py         the FastAPI app: endpoints, validation, guard rails (no Ray: testable in-process)
    deployment.py  the Ray Serve deployment: one model per replica, @serve.batch across clients
    server.py      start Ray and Serve, block until SIGINT/SIGTERM, drain and stop

Needs the `serve` extra: pip install 'xclip-engine[serve]'.
"""

SERVE_INSTALL = "pip install 'xclip-engine[serve]'"
SERVE_MODULES = ("ray", "fastapi", "starlette", "python_multipart")


def missing_modules() -> list[str]:
    """The packages `serve` needs that are not installed (looked up without importing them)."""
    from ..runtime import module_found

    missing = [] if module_found("ray") and module_found("ray.serve") else ["ray[serve]"]
    missing += [name.replace("_", "-") for name in SERVE_MODULES[1:] if not module_found(name)]
    return missing
