"""Where the server listens: loopback by default, any other address only with an API key."""
from __future__ import annotations

import ipaddress
import os
import socket
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import ServeConfig

API_KEY_ENV = "CHATTUNE_API_KEY"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(serve_cfg: ServeConfig) -> ServeConfig:
    """Resolve the API key (config, else $CHATTUNE_API_KEY) and refuse an open bind without one.

    Returns:
        The config with `api_key` filled from the environment when it was unset.

    Raises:
        ConfigError: host is not a loopback address and no API key is set.
    """
    key = serve_cfg.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(serve_cfg.host) and not key:
        raise ConfigError(f"refusing to serve on {serve_cfg.host!r} without an API key: anyone who can reach "
                          f"this address could use the model. Pass --api-key KEY (or set {API_KEY_ENV}), "
                          "or bind 127.0.0.1 (the default)")
    return serve_cfg.model_copy(update={"api_key": key})


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = any free port; read it from getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
