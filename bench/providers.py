"""Provider figures (issue 3): Route 53 on moto for a 2,500-record change, the RFC2136 round trip
to a real BIND, and the calls a steady state makes. The measuring code is the tests' own
(``tests/providers/test_route53.py::test_2500_record_sets_go_in_compliant_batches`` and
``tests/providers/test_rfc2136.py::test_update_round_trip_median``, which assert the limits too); this
runs them and collects the figures they print.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from typing import Any

TESTS = [
    "tests/providers/test_route53.py::test_2500_record_sets_go_in_compliant_batches",
    "tests/providers/test_rfc2136.py::test_update_round_trip_median",
]


def run() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        capture_output=True, text=True, timeout=600,
    )
    out: dict[str, Any] = {"tests_passed": proc.returncode == 0}
    m = re.search(r"route53 \(moto in-process\) 2,500-record figures: (\{.*\})", proc.stdout)
    if m:
        out["route53_moto_2500"] = ast.literal_eval(m.group(1))
    m = re.search(r"RFC2136 round trip to BIND over (\d+) updates each: median update ([\d.]+) ms, "
                  r"update\+verify ([\d.]+) ms", proc.stdout)
    if m:
        out["rfc2136_bind"] = {"updates": int(m.group(1)), "median_update_ms": float(m.group(2)),
                               "median_update_verify_ms": float(m.group(3))}
    if proc.returncode != 0:
        out["output_tail"] = proc.stdout[-2000:]
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
