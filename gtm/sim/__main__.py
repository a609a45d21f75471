"""Run one simulated fleet as its own process (end-to-end tests, benchmarks, drills).

Example::

    python -m gtm.sim --kind vllm --host 127.0.0.1 --port 18001 --model llama-3.1-8b

Prints one line ``listening on http://HOST:PORT`` on stdout once it accepts connections,
then serves until SIGINT or SIGTERM (a SIGKILL or SIGSTOP of this process is the point of
the drills).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from gtm.log import setup_logging
from gtm.sim.fleet import KINDS, MODES, start_fleet


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m gtm.sim", description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=KINDS, default="vllm", help="engine kind to play")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18001, help="TCP port; 0 picks a free one")
    p.add_argument("--model", default="llama-3.1-8b", help="served model name")
    p.add_argument("--version", default="", help="model version served")
    p.add_argument("--replicas", type=int, default=1, help="replicas behind the URL")
    p.add_argument("--tokens-per-s", type=float, default=1000.0, help="fleet decode rate at load 1.0")
    p.add_argument("--load", type=float, default=0.3, help="initial load per replica, 0..1")
    p.add_argument("--mode", choices=MODES, default="healthy", help="initial mode")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return p


async def _serve(args: argparse.Namespace) -> None:
    runner, sim = await start_fleet(
        args.kind,
        args.host,
        args.port,
        args.model,
        args.version,
        args.replicas,
        tokens_per_s=args.tokens_per_s,
        load=args.load,
        mode=args.mode,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {sim.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
