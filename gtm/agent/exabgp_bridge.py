"""The ExaBGP ``process`` that relays between ExaBGP and the region agent.

ExaBGP starts this as its API process (``run python -m gtm.agent.exabgp_bridge --socket PATH``;
``encoder text``): ExaBGP reads commands from our stdout and writes acknowledgements
(``done`` / ``error``) and events (``neighbor ... up``, ``shutdown``) to our stdin. The bridge
connects to the agent's Unix socket ``PATH`` and copies lines both ways, one line at a time,
flushing after each. It keeps retrying the connection (every 0.1 s) while the agent is not
listening, and exits when ExaBGP closes our stdin (ExaBGP stopped or restarted) or the agent
closes the socket (ExaBGP then starts a fresh bridge, or stops: see ``exabgp.api.respawn``).

No logic here: what to announce, validation and acknowledgement tracking live in the agent
(``gtm.agent.exabgp``, ``gtm.agent.bgp``). Standard library only, so it starts fast.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

CONNECT_RETRY_S = 0.1
"""Seconds between two attempts to reach the agent's socket."""


def _connect(path: str) -> socket.socket:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            time.sleep(CONNECT_RETRY_S)


def _to_agent(sock: socket.socket) -> None:
    """ExaBGP's stdin (acks, events) → agent; returns when ExaBGP closes our stdin."""
    for line in sys.stdin.buffer:
        try:
            sock.sendall(line if line.endswith(b"\n") else line + b"\n")
        except OSError:
            break
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Relay until one side closes. ``--socket PATH``: the agent's Unix socket."""
    parser = argparse.ArgumentParser(prog="gtm.agent.exabgp_bridge")
    parser.add_argument("--socket", required=True, help="the agent's Unix socket")
    args = parser.parse_args(argv)
    sock = _connect(args.socket)
    threading.Thread(target=_to_agent, args=(sock,), daemon=True).start()
    out = sys.stdout.buffer
    with sock.makefile("rb") as commands:
        for line in commands:  # agent → ExaBGP (commands)
            out.write(line if line.endswith(b"\n") else line + b"\n")
            out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
