"""``make bench``: run every benchmark and write one JSON file.

Usage: python -m bench.run [--out PATH] [--trials N] [--quick] [--fp-duration SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import anycast, failover, false_positive, plan_scale, providers, steady, verify_scale


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench/results/latest.json")
    ap.add_argument("--trials", type=int, default=10, help="failover trials per fault kind")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer trials")
    ap.add_argument("--fp-duration", type=float, default=600.0,
                    help="false-positive run: seconds under stress-ng load (0 skips it; --quick: 60)")
    args = ap.parse_args()
    started = time.time()
    result: dict[str, object] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print("bench: plan() scale ...", file=sys.stderr, flush=True)
    result["plan_scale"] = plan_scale.run((1_000, 10_000) if args.quick else (1_000, 10_000, 100_000))
    print("bench: policy verify scale ...", file=sys.stderr, flush=True)
    result["verify_scale"] = verify_scale.run((8, 12) if args.quick else (8, 12, 16))
    print("bench: failover (killed and hung fleets) ...", file=sys.stderr, flush=True)
    result["failover"] = failover.run(3 if args.quick else args.trials)
    print("bench: anycast (ExaBGP → BIRD: fleet failure, drain) ...", file=sys.stderr, flush=True)
    result["anycast"] = anycast.run(3 if args.quick else max(10, args.trials))
    print("bench: steady state ...", file=sys.stderr, flush=True)
    result["steady_state"] = steady.run(8 if args.quick else 20)
    print("bench: DNS providers (Route 53 on moto, RFC2136 to BIND) ...", file=sys.stderr, flush=True)
    result["providers"] = providers.run()
    fp_duration = min(args.fp_duration, 60.0) if args.quick else args.fp_duration
    if fp_duration > 0:
        print(f"bench: false positives under stress-ng for {fp_duration:g}s, then kill/hang detection ...",
              file=sys.stderr, flush=True)
        result["false_positive"] = false_positive.run(fp_duration, 3 if args.quick else 5)
    result["elapsed_s"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"bench: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
