"""Where the daemon's socket is: the same rules as the daemon's."""

from __future__ import annotations

import os
import tempfile


def default_socket() -> str:
    """``$LOADERD_SOCKET``, else ``$XDG_RUNTIME_DIR/loaderd/loaderd.sock``,
    else ``<tmp>/loaderd-<uid>/loaderd.sock``."""
    env = os.environ.get("LOADERD_SOCKET")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "loaderd", "loaderd.sock")
    return os.path.join(tempfile.gettempdir(), f"loaderd-{os.getuid()}", "loaderd.sock")
