"""`iot-collector probe` against the real simulator over HTTP, run as an operator runs it: a simulator
whose sign recipe and card paths are not our defaults is found unaided, the written configuration
polls devices and cards; a recipe outside the catalogue ends in a clear exit 1; the request bound and
the pacing hold (counted by the simulator, timed by the probe's own request log); TLS problems are
named; configuration errors exit 2."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from collector.config import SignConfig, load_config
from collector.endpoints import ENDPOINTS
from collector.platform.client import PlatformClient
from collector.platform.signing import Signer
from tests.sim_process import APP_ID, APP_SECRET, ROOT, cli, collector_config, simulator

# A platform that signs md5("{appID}{timestamp}{secret}") in upper-case hex and serves its card
# endpoints under other paths (one with another parameter name) than the collector's defaults.
SIM_SIGN = {"hash": "md5", "template": "{appID}{timestamp}{secret}", "case": "upper"}
SIM_ENDPOINTS = {
    "card_status": {"path": "/openapi/iot/card/status", "param": "cardNos"},
    "card_usage": {"path": "/openapi/iot/queryCardRealFlow", "param": "iccid"},
    "card_info": {"path": "/openapi/iot/queryCardInfo"},
}
CARD_ENDPOINTS = ("card_status", "card_usage", "card_info")


def request_log(stderr: str) -> list[dict[str, Any]]:
    """The probe's `probe request` log lines (JSON lines: stderr is not a terminal here)."""
    lines = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "probe request":
            lines.append(event)
    return lines


def assert_paced(lines: list[dict[str, Any]], rate: float, noise: float = 0.05) -> None:
    """Never faster than `rate`: any n consecutive requests span at least (n - 1) / rate seconds, give
    or take `noise` (the time between taking a token and the request leaving varies on a busy host)."""
    starts = [line["sent_at"] for line in lines]
    assert len(starts) >= 2
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            span, least = starts[j] - starts[i], (j - i) / rate
            assert span >= least - noise, f"requests {i + 1}..{j + 1} within {span:.3f} s, at least {least:.3f} s"


async def poll_cards(config_path: Path, iccids: list[str]) -> dict[str, int]:
    """Each card endpoint polled by the collector's own client with the configuration at `config_path`:
    the cards answered per endpoint (a failed chunk raises)."""
    config = load_config(config_path, env={"APP_SECRET": APP_SECRET})
    answered = {}
    async with PlatformClient(config.platform, config.privacy) as client:
        for name in CARD_ENDPOINTS:
            result = await client.fetch(ENDPOINTS[name], iccids)
            result.unwrap()
            answered[name] = len({item.iccid for item in result.items})
    return answered


def test_probe_finds_the_recipe_and_card_paths_unaided_and_the_written_configuration_polls(tmp_path: Path) -> None:
    with simulator(tmp_path, {"sign": SIM_SIGN, "endpoints": SIM_ENDPOINTS}) as sim:
        devices = sim.devices()
        config = collector_config(tmp_path, sim.url, devices[:3], rate_limit=20)
        refused = cli("once", "-c", str(config), "--json")
        assert refused.returncode == 1 and "40001" in refused.stdout, "the defaults must not work against this platform"

        before = sim.requests()
        out = tmp_path / "probed.yaml"
        result = cli("probe", "-c", str(config), "--json", "--write-config", str(out))
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        sent = sim.requests() - before

        accepted = report["signing"]["accepted"]
        assert (accepted["hash"], accepted["template"], accepted["timestamp"]) == (
            "md5", "{appID}{timestamp}{secret}", "seconds")
        assert report["signing"]["configured_accepted"] is False
        endpoints = report["settings"]["endpoints"]
        assert endpoints["card_status"] == {"path": "/openapi/iot/card/status", "param": "cardNos"}
        status_tries = [(t["path"], t["param"]) for t in report["endpoints"]["card_status"]["tried"]]
        assert status_tries[-2:] == [("/openapi/iot/card/status", "iccids"), ("/openapi/iot/card/status", "cardNos")], \
            "the parameter the platform names in its error (缺少参数cardNos) is tried next"
        assert endpoints["card_usage"] == {"path": "/openapi/iot/queryCardRealFlow", "param": "iccid"}
        assert endpoints["card_info"]["path"] == "/openapi/iot/queryCardInfo"
        assert {name: r["status"] for name, r in report["endpoints"].items()} == {
            "device_info": "ok", "device_flow": "ok", "card_status": "ok", "card_usage": "ok", "card_info": "ok",
            "account_assets": "ok"}
        assert report["flow_unit"]["inferred"] == "KiB" and report["flow_unit"]["inference"] is True
        assert any("GiB" in line for line in report["flow_unit"]["reasoning"])
        assert report["end_to_end"]["ok"] is True and report["exit_code"] == 0

        # The bound and the pacing, as the platform counted them and as the probe's log timed them.
        assert sent == report["requests"]["sent"] <= 100
        lines = request_log(result.stderr)
        assert len(lines) == sent and all(line["path"] for line in lines)
        assert_paced(lines, 20)
        assert APP_SECRET not in result.stdout + result.stderr

        # The written configuration: the input with the settings applied, the secret still a reference.
        text = out.read_text()
        assert text.startswith("# the collector's configuration, on its defaults")
        assert "${APP_SECRET}" in text and APP_SECRET not in text
        polled = cli("once", "-c", str(out), "--json")
        assert polled.returncode == 0, polled.stdout + polled.stderr
        observations = json.loads(polled.stdout)
        assert [o["device_no"] for o in observations] == devices[:3]
        iccids = [sim_["iccid"] for o in observations for sim_ in o["sims"]]
        assert iccids and all("error" not in o for o in observations)
        answered = asyncio.run(poll_cards(out, iccids))
        assert answered == {name: len(set(iccids)) for name in CARD_ENDPOINTS}


def test_probe_human_report_names_what_it_found(tmp_path: Path) -> None:
    with simulator(tmp_path, {"sign": SIM_SIGN, "endpoints": SIM_ENDPOINTS}, devices=2) as sim:
        devices = sim.devices()
        config = collector_config(tmp_path, sim.url, devices[:1], rate_limit=50)
        result = cli("probe", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "ACCEPTED after" in text and '"{appID}{timestamp}{secret}"' in text
    assert "card_status       OK /openapi/iot/card/status cardNos  (configured: /openapi/iot/querySimStatus iccids)" \
        in text
    assert "Flow unit (流量单位): an inference" in text and "Result: OK" in text
    assert "--write-config OUT" in text
    for device in devices:
        assert device not in text, "ids are masked in the report"


def test_no_recipe_of_the_catalogue_matches_exits_1_naming_what_was_tried(tmp_path: Path) -> None:
    unusual = {"hash": "sha256", "template": "{traceID}|{secret}|{apiVersion}", "case": "upper"}
    with simulator(tmp_path, {"sign": unusual}, devices=2) as sim:
        config = collector_config(tmp_path, sim.url, sim.devices()[:1], rate_limit=50)
        out = tmp_path / "probed.yaml"
        result = cli("probe", "-c", str(config), "--write-config", str(out))
        sent = sim.requests()
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    text = result.stdout
    assert "Result: FAILED" in text and "no sign recipe was accepted" in text
    assert "hashes hmac-md5, hmac-sha256, md5, sha1, sha256" in text
    assert "lower and upper-case hex" in text and "milliseconds and seconds" in text
    assert "{body}&key={secret}" in text and "{appID}{traceID}{timestamp}{secret}" in text
    assert "NOT written" in text and not out.exists()
    lines = request_log(result.stderr)
    assert sent == len(lines) <= 100 and sent > 50, "the bound is used for the search, and holds"
    assert_paced(lines, 50)


def test_probe_finds_a_millisecond_timestamp_recipe(tmp_path: Path) -> None:
    sign = {"hash": "hmac-sha256", "template": "{appID}{timestamp}", "timestamp": "milliseconds"}
    with simulator(tmp_path, {"sign": sign}, devices=2) as sim:
        headers = {"appID": APP_ID, "apiVersion": "2.0", "traceID": "t"}
        signer = Signer.from_config(SignConfig.model_validate(sign), APP_SECRET)
        headers["timestamp"] = signer.timestamp(time.time())
        form = {"deviceNo": sim.devices()[0]}
        headers["sign"] = signer.sign(headers, form)
        request = urllib.request.Request(f"{sim.url}/openapi/iot/queryDeviceFlow",
                                         data=f"deviceNo={form['deviceNo']}".encode(), method="POST",
                                         headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["code"] == 0, "the simulator refused a millisecond timestamp"
        config = collector_config(tmp_path, sim.url, sim.devices()[:1], rate_limit=50)
        result = cli("probe", "-c", str(config), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert report["signing"]["accepted"] == {**sign, "case": "lower"}


def _certificate(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    return cert, key


async def test_a_certificate_problem_is_named_and_exits_1(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = collector_config(tmp_path, f"https://127.0.0.1:{port}", ["862107053699559"])
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "probe", "-c", str(config), "--json", cwd=ROOT,
            env={"APP_SECRET": APP_SECRET, "PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await runner.cleanup()
    assert process.returncode == 1, stderr.decode()
    report = json.loads(stdout)
    tls = report["reachability"]["tls"]
    assert tls.startswith("certificate problem:") and "self" in tls and "signed" in tls
    assert report["reachability"]["reached"] is False
    assert "could not be reached" in report["problems"][0] and "Traceback" not in stderr.decode()


def test_a_configuration_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("platform: {app_id: a, app_secret: b, rate_limit: -1}\n")
    result = cli("probe", "-c", str(config))
    assert result.returncode == 2 and "platform.rate_limit" in result.stderr
    good = collector_config(tmp_path, "http://127.0.0.1:9", ["1"])
    result = cli("probe", "-c", str(good), "--write-config", str(tmp_path / "missing" / "out.yaml"))
    assert result.returncode == 2 and "--write-config" in result.stderr


def test_an_unreachable_platform_exits_1_after_one_request(tmp_path: Path) -> None:
    config = collector_config(tmp_path, "http://127.0.0.1:9", ["1"])
    result = cli("probe", "-c", str(config), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["reachability"]["reached"] is False and report["requests"]["sent"] <= 2
    assert "could not be reached" in report["problems"][0]
