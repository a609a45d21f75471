"""Fleet simulator serving real metric samples (demo, drills, tests).

``python -m gtm.sim --kind vllm --port 18001 --model llama-3.1-8b`` runs one fleet as its
own process; :func:`start_fleet` runs one in-process.
"""

from __future__ import annotations

from gtm.sim.fleet import KINDS, MODES, FleetSim, make_app, start_fleet

__all__ = ["KINDS", "MODES", "FleetSim", "make_app", "start_fleet"]
