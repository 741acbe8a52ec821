"""The simulator as a second, independent implementation of the platform's contract: its process and
its modules load nothing of the client (the client's schema, endpoint table, signer or parser); it
verifies every recipe of `platform.sign` with its own code (checked here against the client's signer);
and a configuration with another recipe, other paths or other field names makes a platform that a
collector with the defaults cannot read until it is configured the same way."""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from collector.config import PlatformConfig
from collector.endpoints import ENDPOINTS
from collector.platform.client import PlatformClient
from collector.platform.errors import ApiError, AuthError
from collector.platform.signing import Signer
from collector.simulator import PlatformSettings, Simulator
from collector.simulator.contract import SignVerifier
from tests.servers import SimulatorProcess

ROOT = Path(__file__).resolve().parent.parent
CLIENT_PACKAGES = ("collector.platform", "collector.endpoints")
CLIENT_MODULES = ("collector.config",)  # the collector's schema: it loads the endpoint table


def client_module(name: str) -> bool:
    return name in CLIENT_MODULES or any(name == p or name.startswith(p + ".") for p in CLIENT_PACKAGES)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _signed(form: dict[str, str], signer: Signer, app_id: str, stamp: str | None) -> dict[str, str]:
    headers = {"appID": app_id, "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
               "timestamp": stamp or signer.timestamp(time.time())}
    headers["sign"] = signer.sign(headers, form)
    return headers


def signed_post(url: str, form: dict[str, str], signer: Signer, app_id: str,
                stamp: str | None = None) -> dict[str, Any]:
    """A signed request to a simulator in another process."""
    response = httpx.post(url, data=form, headers=_signed(form, signer, app_id, stamp), timeout=10)
    return dict(response.json())


async def signed_apost(url: str, form: dict[str, str], signer: Signer, app_id: str,
                       stamp: str | None = None) -> dict[str, Any]:
    """A signed request to a simulator in this process's event loop."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url, data=form, headers=_signed(form, signer, app_id, stamp))
    return dict(response.json())


# --- nothing of the client --------------------------------------------------------------------------------


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports (absolute names; package parents included), wherever in the file."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    with_parents: set[str] = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def _source(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_nothing_under_the_simulator_imports_the_client_even_through_another_module() -> None:
    start = sorted(f"collector.simulator.{p.stem}" if p.stem != "__init__" else "collector.simulator"
                   for p in (ROOT / "collector" / "simulator").glob("*.py"))
    seen: dict[str, str] = {name: "" for name in start}  # module -> the module that imported it
    queue = list(start)
    while queue:
        module = queue.pop()
        path = _source(module)
        if path is None:
            continue
        for name in _imports(path, module):
            if name.startswith("collector") and name not in seen:
                seen[name] = module
                queue.append(name)
    reached = [name for name in seen if _source(name) is not None]
    assert "collector.configfile" in reached and "collector.simulator.contract" in reached, "the walk must work"

    def chain(name: str) -> str:
        links = [name]
        while seen.get(links[-1]):
            links.append(seen[links[-1]])
        return " <- ".join(links)

    assert [chain(n) for n in reached if client_module(n)] == []


def test_the_simulate_command_runs_without_loading_the_client(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "sim.yaml", {
        "platform": {"app_id": "sim-app", "app_secret": "sim-secret", "sign": {"hash": "sha1"},
                     "fields": {"device_flow": {"rssi_dbm": "signal"}}},
        "simulator": {"devices": 3, "seed": 5}})
    with SimulatorProcess("-c", str(config)) as sim:
        devices = sim.admin("GET", "inventory")["devices"]
        signer = Signer.from_config(PlatformConfig.model_validate({"sign": {"hash": "sha1"}}).sign, "sim-secret")
        answer = signed_post(f"{sim.url}/openapi/iot/queryDeviceFlow", {"deviceNo": devices[0]["deviceNo"]},
                             signer, "sim-app")
        assert answer["code"] == 0 and "signal" in answer["data"]["device"], "a request went all the way through"
        loaded = sim.admin("GET", "modules")["collector"]
    assert "collector.simulator.server" in loaded and "collector.simulator.settings" in loaded
    assert [m for m in loaded if client_module(m)] == []


# --- signing -------------------------------------------------------------------------------------------


TEMPLATES = (
    "appID={appID}&body={body}&timestamp={timestamp}&traceID={traceID}&secret={secret}",
    "{appID}{timestamp}{secret}",
    "{body}&key={secret}",
    "{apiVersion}|{traceID}|{timestamp}|{body}",
)


@pytest.mark.parametrize(("hash_name", "case", "unit"), list(itertools.product(
    ("md5", "sha1", "sha256", "hmac-md5", "hmac-sha256"), ("lower", "upper"), ("seconds", "milliseconds"))))
def test_every_recipe_the_client_can_sign_the_simulator_verifies_on_its_own(hash_name: str, case: str,
                                                                             unit: str) -> None:
    form = {"iccids": "898608841925D2210999,89860123", "month": "202509", "empty": ""}
    for template in TEMPLATES:
        recipe = {"hash": hash_name, "case": case, "timestamp": unit, "template": template}
        signer = Signer.from_config(PlatformConfig.model_validate({"sign": recipe}).sign, "s3cr3t")
        headers = {"appID": "app", "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
                   "timestamp": signer.timestamp(time.time())}
        headers["sign"] = signer.sign(headers, form)
        verifier = PlatformSettings.model_validate({"app_secret": "s3cr3t", "sign": recipe}).verifier()
        assert verifier.verify(headers, form), recipe
        assert verifier.skew(headers["timestamp"], time.time()) < 5
        flipped = headers["sign"].lower() if case == "upper" else headers["sign"].upper()
        assert not verifier.verify({**headers, "sign": flipped}, form), "the hex case is part of the recipe"
        if "{secret}" in template or hash_name.startswith("hmac-"):
            wrong = SignVerifier("other", hash_name, template, case, unit)  # type: ignore[arg-type]
            assert not wrong.verify(headers, form)
        if "{body}" in template:
            assert not verifier.verify(headers, {**form, "month": "202510"})


async def test_a_timestamp_is_read_in_the_recipes_unit() -> None:
    recipe = {"timestamp": "milliseconds"}
    simulator = Simulator(devices=3, seed=1, speed=0, platform={"app_id": "a", "app_secret": "b", "sign": recipe},
                          start=1758192050.0)
    await simulator.start()
    try:
        device = simulator.device_numbers()[0]
        config = PlatformConfig.model_validate({"app_id": "a", "app_secret": "b", "sign": recipe})
        async with PlatformClient(config, base_url=simulator.base_url) as client:
            assert (await client.device_flow(device)).device_no == device
        signer = Signer.from_config(config.sign, "b")
        url = simulator.base_url + "/openapi/iot/queryDeviceFlow"
        answer = await signed_apost(url, {"deviceNo": device}, signer, "a", stamp=str(int(time.time())))
        assert answer["code"] == 40003, "seconds are 1000 times too small for a milliseconds recipe"
        answer = await signed_apost(url, {"deviceNo": device}, signer, "a", stamp=str(int(time.time() * 1000)))
        assert answer["code"] == 0
    finally:
        await simulator.stop()


# --- another platform: recipe, paths, field names --------------------------------------------------------


def test_a_platform_with_another_recipe_and_paths_is_closed_to_a_default_collector_until_configured_alike(
        tmp_path: Path) -> None:
    other = {"app_id": "reseller-7", "app_secret": "k7-secret",
             "sign": {"hash": "md5", "template": "{appID}{timestamp}{secret}", "case": "upper"},
             "endpoints": {"card_status": {"path": "/openapi/iot/card/status"},
                           "card_usage": {"path": "/openapi/iot/card/realFlow", "param": "cardNos"}}}
    sim_file = write_yaml(tmp_path / "sim.yaml", {"platform": other, "simulator": {"devices": 4, "seed": 3}})
    with SimulatorProcess("-c", str(sim_file), "--speed", "0") as sim:
        inventory = sim.admin("GET", "inventory")["devices"]
        device_nos = [d["deviceNo"] for d in inventory]
        iccids = [i for d in inventory for i in d["iccids"]]

        def collector_config(platform: dict[str, Any], name: str) -> Path:
            return write_yaml(tmp_path / name, {
                "platform": {"base_url": sim.url, **platform}, "inventory": {"devices": device_nos},
                "state_dir": str(tmp_path / "state"), "alerts": {"enabled": False}, "http": {"enabled": False}})

        def once(config: Path) -> tuple[int, list[dict[str, Any]]]:
            done = subprocess.run([sys.executable, "-m", "collector", "once", "-c", str(config), "--json"],
                                  capture_output=True, text=True, cwd=ROOT, timeout=60)
            return done.returncode, json.loads(done.stdout)

        defaults = collector_config({"app_id": "reseller-7", "app_secret": "k7-secret"}, "defaults.yaml")
        code, results = once(defaults)
        assert code == 1 and results[0]["error"]["code"] == 40001
        same = collector_config(other, "same.yaml")
        code, results = once(same)
        assert code == 0 and [r["device_no"] for r in results] == device_nos
        assert all(r["sims"] for r in results)

        async def cards() -> None:
            recipe_only = PlatformConfig.model_validate({**other, "endpoints": {}})
            async with PlatformClient(recipe_only, base_url=sim.url) as client:
                with pytest.raises(ApiError) as missing:
                    (await client.fetch(ENDPOINTS["card_status"], iccids)).unwrap()
                assert missing.value.code == 40400, "not found: the default path is not this platform's"
            async with PlatformClient(PlatformConfig.model_validate(other), base_url=sim.url) as client:
                statuses = (await client.fetch(ENDPOINTS["card_status"], iccids)).unwrap()
                usage = (await client.fetch(ENDPOINTS["card_usage"], iccids)).unwrap()
            assert sorted(s.iccid for s in statuses) == sorted(iccids)
            assert sorted(u.iccid for u in usage) == sorted(iccids) and all(u.total_bytes for u in usage)

        import asyncio

        asyncio.run(cards())
        stats = sim.admin("GET", "stats")["endpoints"]
    assert stats["device_flow"]["ok"] == len(device_nos) and stats["device_flow"]["bad_sign"] >= 1
    assert stats["card_usage"] == {"ok": 1}


async def test_field_names_of_the_configuration_rename_the_answers() -> None:
    fields = {"device_flow": {"rssi_dbm": "signal", "sim.online_status": "netState", "sims": "simList"},
              "card_status": {"records": "list", "sim_status": "cardState"},
              "account_assets": {"balance": "money"}}
    platform = {"app_id": "a", "app_secret": "b", "fields": fields}
    simulator = Simulator(devices=4, seed=2, speed=0, platform=platform, start=1758192050.0)
    await simulator.start()
    try:
        device_no = simulator.device_numbers()[0]
        iccids = simulator.iccids()[:3]
        renamed = PlatformConfig.model_validate(platform)
        signer = Signer.from_config(renamed.sign, "b")
        raw = await signed_apost(simulator.base_url + "/openapi/iot/queryDeviceFlow", {"deviceNo": device_no},
                                 signer, "a")
        device, sims = raw["data"]["device"], raw["data"]["simList"]
        assert "signal" in device and "rssi" not in device and "sims" not in raw["data"]
        assert all("netState" in s and "onlineStatus" not in s for s in sims)
        assert "onlineStatus" in device, "only the SIM record's online status is renamed"
        raw = await signed_apost(simulator.base_url + "/openapi/iot/querySimStatus", {"iccids": ",".join(iccids)},
                                 signer, "a")
        assert [r["iccid"] for r in raw["data"]["list"]] == iccids and "cardState" in raw["data"]["list"][0]
        async with PlatformClient(renamed, base_url=simulator.base_url) as client:
            observed = await client.device_flow(device_no)
            assert observed.rssi_dbm == device["signal"] and len(observed.sims) == len(sims)
            statuses = (await client.fetch(ENDPOINTS["card_status"], iccids)).unwrap()
            assert [s.sim_status for s in statuses] == [r["cardState"] for r in raw["data"]["list"]]
            assert (await client.account_assets()).balance is not None
        async with PlatformClient(PlatformConfig.model_validate({"app_id": "a", "app_secret": "b"}),
                                  base_url=simulator.base_url) as client:
            default = await client.device_flow(device_no)
            assert default.rssi_dbm is None and not default.sims, "a collector with our guesses misses them"
            assert (await client.account_assets()).balance is None
    finally:
        await simulator.stop()


def test_the_simulators_own_reading_of_a_configuration_names_a_bad_key(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {"platform": {
        "app_secret": "never-shown", "sign": {"hash": "crc32"}, "endpoints": {"card_status": {"path": "x"}}}})
    done = subprocess.run([sys.executable, "-m", "collector", "simulate", "-c", str(bad), "--port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "platform.sign.hash" in done.stderr and "platform.endpoints.card_status.path" in done.stderr
    assert "never-shown" not in done.stderr
    fields_only = write_yaml(tmp_path / "fields.yaml", {"platform": {"fields": {"device_flow": {"rssi": "x"}}}})
    done = subprocess.run([sys.executable, "-m", "collector", "simulate", "-c", str(fields_only), "--port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "platform.fields.device_flow.rssi: unknown field" in done.stderr


def test_an_endpoint_the_simulator_does_not_serve_is_named_at_start(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "more.yaml", {"platform": {"endpoints": {"card_stauts": {"path": "/x"}}}})
    with SimulatorProcess("-c", str(config), "--devices", "2") as sim:
        assert any("not served" in line and "platform.endpoints.card_stauts" in line for line in sim.banner)
        assert sim.admin("GET", "state")["not_served"] == ["endpoints.card_stauts"]


async def test_the_embedded_simulator_reads_the_daemons_validated_platform_section() -> None:
    config = PlatformConfig.model_validate({"app_id": "embedded", "app_secret": "held-by-the-daemon",
                                            "sign": {"hash": "hmac-sha256"},
                                            "endpoints": {"device_flow": {"path": "/v3/flow"}}})
    simulator = Simulator(devices=2, seed=1, speed=0, platform=config, start=1758192050.0)
    assert simulator.settings.secret == "held-by-the-daemon" and simulator.specs["device_flow"].path == "/v3/flow"
    await simulator.start()
    try:
        async with PlatformClient(config, base_url=simulator.base_url) as client:
            assert (await client.device_flow(simulator.device_numbers()[0])).device_no
        wrong = PlatformConfig.model_validate({**config.model_dump(exclude={"app_secret"}), "app_secret": "guess"})
        async with PlatformClient(wrong, base_url=simulator.base_url) as client:
            with pytest.raises(AuthError):
                await client.device_flow(simulator.device_numbers()[0])
    finally:
        await simulator.stop()


class _ValidatedSection:
    """Stands for the daemon's validated section of a collector that knows more than the simulator."""

    app_secret = None

    def model_dump(self, **_options: Any) -> dict[str, Any]:
        return {"app_id": "newer", "endpoints": {"card_speed": {"path": "/openapi/iot/querySimSpeed"}},
                "fields": {"card_speed": {"speed_code": "speed"},
                           "device_flow": {"speed_limit": "limit", "rssi_dbm": "signal"}}}


def test_what_a_collector_knows_and_the_simulator_does_not_is_left_alone() -> None:
    settings = PlatformSettings.of(_ValidatedSection())
    assert settings.not_served == ("endpoints.card_speed", "fields.card_speed", "fields.device_flow.speed_limit")
    assert settings.fields == {"device_flow": {"rssi_dbm": "signal"}}
    simulator = Simulator(devices=1, speed=0, platform=_ValidatedSection())
    assert simulator.state()["not_served"] == list(settings.not_served)
    with pytest.raises(ValueError, match="speed_limit\n  unknown field"):
        PlatformSettings.model_validate({"fields": {"device_flow": {"speed_limit": "limit"}}})
