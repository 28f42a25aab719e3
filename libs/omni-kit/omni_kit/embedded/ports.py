"""Finding TCP ports for the embedded servers and waiting for them to listen."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from pathlib import Path

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is drawn at random from below the kernel's ephemeral range, where ports handed out for
    outgoing connections and to servers binding port 0 (other test processes, say) never land; ports this
    process returned before are not returned again. Another process may still take the port before the
    caller binds it, so callers that start a server on it retry on "address in use".
    """
    candidates = _non_ephemeral_range()
    for _ in range(200 if candidates else 0):
        port = random.choice(candidates)
        with _handed_out_lock:
            if port in _handed_out or not port_is_free(port, host):
                continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
    return fallback


def _non_ephemeral_range() -> range:
    """Return the ports from 20000 (1024 if need be) up to where the kernel's ephemeral range starts."""
    ephemeral_start = 32768  # Linux's default; macOS and Windows start at 49152
    with contextlib.suppress(OSError, ValueError, IndexError):
        ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    low = 20000 if ephemeral_start > 21000 else 1024
    return range(low, max(low, ephemeral_start))


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a server could bind ``host:port`` now (no listener on it; TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until_closed(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    """Wait until nothing accepts connections on ``host:port``; return False if it still does at the end."""
    deadline = time.monotonic() + timeout
    while port_accepts(port, host, timeout=0.2):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
