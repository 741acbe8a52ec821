"""A simulator of the platform's agent open API v2.0, and a second, independent implementation of its
contract: same paths, headers, signing, envelope and field names as the real one, read from the
documentation and the configuration, never from the client (nothing here imports `collector.platform`,
`collector.endpoints` or `collector.config`). Over a deterministic fleet that evolves in simulated time,
with faults and incidents on demand, or replaying a captured folder. For demos (the embedded
default), tests and benchmarks. See docs/simulator.md.

    sim = Simulator(devices=50, seed=1, speed=60, platform=config.platform)
    base_url = await sim.start("127.0.0.1", 0)
    ...
    await sim.stop()

Modules: `contract` (endpoints, codes, signature check, field names), `settings` (what it reads of a
configuration), `fleet` (the behaviour model), `wire` (the JSON shapes), `clock` (simulated time and the
clock answers report on), `server` (the HTTP API), `replay` (a captured folder served), `admin`
(`/_sim/...`), `faults`, `localtime`, `answers`, `command` (`iot-collector simulate`).
"""

from collector.simulator.command import add_arguments, main, run
from collector.simulator.faults import FaultConfig
from collector.simulator.replay import Capture, CaptureError, ReplayServer
from collector.simulator.server import PlatformServer, Simulator
from collector.simulator.settings import EMBEDDED_APP_ID, EMBEDDED_APP_SECRET, PlatformSettings

__all__ = ["EMBEDDED_APP_ID", "EMBEDDED_APP_SECRET", "Capture", "CaptureError", "FaultConfig", "PlatformServer",
           "PlatformSettings", "ReplayServer", "Simulator", "add_arguments", "main", "run"]
