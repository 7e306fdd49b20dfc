"""Free loopback ports for brokers the tests start.

A port the kernel picks with bind(("127.0.0.1", 0)) comes from the ephemeral
range, where it also picks the local ports of outgoing connections: once
released, a client connection of a parallel test can take it before the broker
binds it. Ports are taken below that range instead, walking from an offset
that depends on the process.
"""

import itertools
import os
import socket

FIRST = 20000


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_LOW = _ephemeral_low()
assert _LOW > FIRST + 1000, f"the ephemeral port range starts at {_LOW}"
_SPAN = _LOW - FIRST
_STEPS = itertools.count((os.getpid() * 7919 + 4001) % _SPAN)


def free_port():
    """A loopback port nothing holds now, outside the ephemeral range; each
    call gives another one."""
    for _ in range(_SPAN):
        port = FIRST + next(_STEPS) % _SPAN
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {FIRST}..{_LOW}")
