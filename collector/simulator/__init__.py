"""A simulator of the platform's agent open API v2.0: same paths, headers, signing, envelope and field
names as the real one, over a deterministic fleet that evolves in simulated time, with faults on
demand. For demos (the embedded default), tests and benchmarks. See docs/simulator.md.

    sim = Simulator(devices=50, seed=1, speed=60, platform=config.platform)
    base_url = await sim.start("127.0.0.1", 0)
    ...
    await sim.stop()

Modules: `fleet` (the behaviour model), `wire` (the JSON shapes), `server` (the HTTP API), `admin`
(`/_sim/...`), `faults`, `clock`, `localtime`, `command` (`iot-collector simulate`).
"""

from collector.simulator.command import add_arguments, main
from collector.simulator.faults import FaultConfig
from collector.simulator.server import EMBEDDED_APP_ID, EMBEDDED_APP_SECRET, Simulator

__all__ = ["EMBEDDED_APP_ID", "EMBEDDED_APP_SECRET", "FaultConfig", "Simulator", "add_arguments", "main"]
