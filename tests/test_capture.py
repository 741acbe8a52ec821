"""`iot-collector capture` against the real simulator over HTTP: the agreed layout, no secret value in
any file (the simulator's answers carry Wi-Fi and web passwords), consistent pseudonyms, and a capture
replayed by `iot-collector simulate --replay DIR` polls to the same observations as the live platform."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from collector.config import SignConfig
from collector.firstcontact.shapes import is_secret_key
from collector.platform.signing import Signer
from tests.sim_process import APP_ID, APP_SECRET, SimProcess, cli, collector_config, simulator

SECRET_KEYS = ("wifiPass", "wifiPass5G", "webPassword", "payPassword")


def raw_device_answer(sim: SimProcess, device_no: str) -> dict[str, Any]:
    """What the platform sends for a device, secrets included (a signed request of our own)."""
    signer = Signer.from_config(SignConfig(), APP_SECRET)
    headers = {"appID": APP_ID, "apiVersion": "2.0", "traceID": "capture-test", "timestamp": str(int(time.time()))}
    headers["sign"] = signer.sign(headers, {"deviceNo": device_no})
    request = urllib.request.Request(f"{sim.url}/openapi/iot/queryDeviceFlow", data=f"deviceNo={device_no}".encode(),
                                     headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    assert answer["code"] == 0
    return answer


def planted_secrets(sim: SimProcess, devices: list[str]) -> set[str]:
    """Every secret value the simulator sends for these devices."""
    values = set()
    for device in devices:
        data = raw_device_answer(sim, device)["data"]
        for record in (data["device"], *data["sims"]):
            values.update(str(record[k]) for k in SECRET_KEYS if record.get(k) not in (None, ""))
    return values


def walk_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in walk_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in walk_keys(v)]
    return []


def files(folder: Path) -> dict[str, Any]:
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}


def test_capture_writes_the_replay_layout_without_a_secret(tmp_path: Path) -> None:
    with simulator(tmp_path, devices=4) as sim:
        devices = sim.devices()
        planted = planted_secrets(sim, devices[:2])
        config = collector_config(tmp_path, sim.url, devices, rate_limit=50)
        out = tmp_path / "capture"
        result = cli("capture", "-c", str(config), "--out", str(out), "--devices", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(planted) >= 2, "the simulator's answers carry secrets to remove"
    written = files(out)

    manifest = written.pop("manifest.json")
    assert set(manifest) == {"format", "captured_at", "platform", "endpoints", "pseudonymised"}
    assert manifest["format"] == 1 and manifest["pseudonymised"] is False
    assert abs(manifest["captured_at"] - time.time()) < 600
    assert manifest["platform"] == {"flow_unit": "KiB", "timezone": "Asia/Shanghai", "api_version": "2.0"}
    assert manifest["endpoints"]["card_status"] == {"path": "/openapi/iot/querySimStatus", "param": "iccids",
                                                    "batch_limit": 10}
    assert set(manifest["endpoints"]) == {"device_info", "device_flow", "card_status", "card_usage", "card_info",
                                          "account_assets"}

    for device in devices[:2]:
        for endpoint in ("device_flow", "device_info"):
            envelope = written[f"{endpoint}/{device}.json"]
            assert envelope["code"] == 0 and envelope["data"]["device"]["deviceNo"] == device
            assert {"message", "timestamp", "traceID"} <= set(envelope)
    assert not any(name.startswith("device_flow/") and devices[2] in name for name in written)
    iccids = {sim_["iccid"] for device in devices[:2] for sim_ in written[f"device_flow/{device}.json"]["data"]["sims"]}
    for endpoint in ("card_status", "card_usage", "card_info"):
        cards = {name.split("/")[1].removesuffix(".json") for name in written if name.startswith(endpoint + "/")}
        assert cards == iccids
        for iccid in cards:
            envelope = written[f"{endpoint}/{iccid}.json"]
            assert envelope["code"] == 0 and [r["iccid"] for r in envelope["data"]] == [iccid]
    assert written["account_assets/account.json"]["data"]["balance"] is not None

    for path in out.rglob("*.json"):
        raw = path.read_bytes()
        for value in planted | {APP_SECRET}:
            assert value.encode() not in raw, f"{path.name} holds a secret"
    for name, content in written.items():
        assert not [k for k in walk_keys(content) if is_secret_key(k)], name
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    assert "--pseudonymise" in result.stdout


def test_pseudonymised_capture_replaces_ids_consistently(tmp_path: Path) -> None:
    with simulator(tmp_path, devices=3) as sim:
        devices = sim.devices()
        real = {d: raw_device_answer(sim, d)["data"] for d in devices[:2]}
        planted = planted_secrets(sim, devices[:2])
        config = collector_config(tmp_path, sim.url, devices, rate_limit=50)
        out = tmp_path / "capture"
        result = cli("capture", "-c", str(config), "--out", str(out), "--devices", "2", "--pseudonymise")
    assert result.returncode == 0, result.stdout + result.stderr
    written = files(out)
    assert written["manifest.json"]["pseudonymised"] is True
    blob = "\n".join(json.dumps(v, ensure_ascii=False) for v in written.values()) + "\n".join(written)

    real_ids = set()
    for data in real.values():
        device = data["device"]
        real_ids |= {device["deviceNo"], device["imei"], device["mac"], device["position"]["cellId"]}
        real_ids |= {s[k] for s in data["sims"] for k in ("iccid", "simNo", "imsi") if s[k]}
    for value in real_ids | planted | {APP_SECRET}:
        assert value not in blob, f"{value} survived"

    flows = {name: v for name, v in written.items() if name.startswith("device_flow/")}
    assert len(flows) == 2
    real_iccids = {s["iccid"] for data in real.values() for s in data["sims"]}
    for name, envelope in flows.items():
        fake_no = name.split("/")[1].removesuffix(".json")
        device = envelope["data"]["device"]
        # The platform's own record id is not personal: it tells which real device this was.
        original = next(d["device"] for d in real.values() if d["device"]["id"] == device["id"])
        assert device["deviceNo"] == fake_no and f"device_info/{fake_no}.json" in written
        assert len(fake_no) == len(original["deviceNo"]) and fake_no.isdigit() == original["deviceNo"].isdigit()
        if original["imei"] == original["deviceNo"]:
            assert device["imei"] == fake_no, "one real value, one fake, whichever key holds it"
        assert device["imei"][:8] == original["imei"][:8] and _luhn_ok(device["imei"]), "still a valid IMEI"
        assert re.fullmatch(r"([0-9A-F]{2}:){5}[0-9A-F]{2}", device["mac"]) and device["mac"][:8] == original["mac"][:8]
        lat = device["position"]["lat"]
        assert int(lat) == int(original["position"]["lat"]) and lat != original["position"]["lat"]
        for sim_ in envelope["data"]["sims"]:
            iccid = sim_["iccid"]
            assert sim_["deviceNo"] == fake_no
            assert iccid[:6] in {r[:6] for r in real_iccids} and len(iccid) in {len(r) for r in real_iccids}
            assert iccid in (device["mainIccid"], device["vice1Iccid"], device["vice2Iccid"], device["usimIccid"])
            for endpoint in ("card_status", "card_usage", "card_info"):
                record = written[f"{endpoint}/{iccid}.json"]["data"][0]
                assert record["iccid"] == iccid and record["simNo"] == sim_["simNo"]


def _luhn_ok(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def test_capture_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text("{}")
    config = collector_config(tmp_path, "http://127.0.0.1:9", ["1"])
    result = cli("capture", "-c", str(config), "--out", str(tmp_path / "old"))
    assert result.returncode == 2 and "not empty" in result.stderr


def observations(stdout: str) -> list[dict[str, Any]]:
    """`once --json` without what depends on the moment of the poll."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("polled_at", "status_age_seconds")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    result: list[dict[str, Any]] = strip(json.loads(stdout))
    return result


def test_a_replayed_capture_polls_to_the_same_observations_as_the_live_platform(tmp_path: Path) -> None:
    with simulator(tmp_path, devices=3) as sim:
        devices = sim.devices()
        config = collector_config(tmp_path, sim.url, devices, rate_limit=50)
        live = cli("once", "-c", str(config), "--json")
        out = tmp_path / "capture"
        captured = cli("capture", "-c", str(config), "--out", str(out), "--devices", "3")
    assert live.returncode == 0 and captured.returncode == 0, captured.stdout + captured.stderr
    with simulator(tmp_path, replay=out, name="replay.yaml") as replay:
        replayed_config = collector_config(tmp_path, replay.url, devices, name="replayed.yaml", rate_limit=50)
        replayed = cli("once", "-c", str(replayed_config), "--json")
        unknown = cli("once", "-c", str(replayed_config), "--json", "--device", "0000000001")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert observations(replayed.stdout) == observations(live.stdout)
    assert unknown.returncode == 1 and json.loads(unknown.stdout)[0]["error"]["code"] == 40404
