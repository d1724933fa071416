"""Run the dashboard under uvicorn: in the foreground (``tinyfed dashboard``) or in a thread beside a
run (``--dashboard`` on run, demo and simulate), where it must not take Ctrl-C from the run.

The socket is bound here, before uvicorn starts, so port 0 (a free port) is known at once and the
address can be printed first; a port in use is a clear error, not a traceback from a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyfed.errors import TinyfedError

log = logging.getLogger(__name__)

__all__ = ["LOCAL_HOSTS", "BackgroundDashboard", "bind", "check_bind", "serve_forever", "url_of"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class DashboardError(TinyfedError):
    """The dashboard cannot serve as asked (an address without a token, a port in use)."""


def is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """A dashboard beyond this machine needs a token: anyone who can reach it could read the run."""
    if not is_local(host) and not token:
        raise DashboardError(f"--host {host} serves the dashboard beyond this machine, which needs a token",
                             fix=f"add --token SECRET (e.g. --token {secrets.token_urlsafe(12)}), or drop --host "
                                 "to bind 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DashboardError(f"cannot resolve --host {host} ({exc.strerror})", fix="give an IP address") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port} ({exc.strerror})",
                             fix="give another --port (0 picks a free one)") from None
    sock.set_inheritable(False)
    return sock


def url_of(sock: socket.socket, host: str, token: str | None) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _server(dirs: Sequence[str | Path], token: str | None) -> tuple[Any, Any]:
    """A uvicorn server of the dashboard, and the app's handlers."""
    import uvicorn

    from tinyfed.web.app import build_app

    app, handlers = build_app(dirs, token=token)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    return uvicorn.Server(config), handlers


def serve_forever(dirs: Sequence[str | Path], host: str, port: int, token: str | None,
                  announce: Any = None) -> None:
    """``tinyfed dashboard``: serve until Ctrl-C (uvicorn handles the signal and stops cleanly)."""
    check_bind(host, token)
    sock = bind(host, port)
    server, _ = _server(dirs, token)
    if announce is not None:
        announce(url_of(sock, host, token))
    server.run(sockets=[sock])


class BackgroundDashboard:
    """The dashboard in a daemon thread of a run's own process; :meth:`stop` ends it.

    uvicorn installs signal handlers only on the main thread, so Ctrl-C still reaches the run.
    """

    def __init__(self, dirs: Sequence[str | Path], host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None) -> None:
        check_bind(host, token)
        self.sock = bind(host, port)
        self.url = url_of(self.sock, host, token)
        self.server, self.handlers = _server(dirs, token)
        self.thread = threading.Thread(target=self._run, name="tinyfed-dashboard", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception:  # noqa: BLE001 - the dashboard must never take the run down with it
            log.exception("the dashboard stopped")

    def stop(self, timeout: float = 5.0) -> None:
        """Push the last snapshot to open pages (at most ~2 s), then stop serving."""
        self.handlers.close_streams(timeout=2.0)
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
