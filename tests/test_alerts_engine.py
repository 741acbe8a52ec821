"""The alert engine with a fake clock: lifecycle (pending, firing, resolved), hysteresis,
keep_firing_for, notifications once per firing, grouping, persistence across restarts, silences,
reload, and notifiers that fail independently."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from collector import metrics
from collector.alerts.config import AlertsConfig
from collector.alerts.engine import AlertEngine
from collector.alerts.notifiers.base import GroupingReceiver
from collector.state import FieldRecord

T0 = 1_750_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder(GroupingReceiver):
    """A grouping notifier that keeps what it delivers (and can be told to fail)."""

    type = "log"

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.sent: list[dict[str, Any]] = []
        self.fail = False

    async def deliver(self, message: dict[str, Any], target: int) -> None:
        if self.fail:
            raise ConnectionError("receiver down")
        self.sent.append(message)


WEAK = {"name": "WeakSignal", "kind": "device", "condition": "rssi_dbm < -105", "clear": "rssi_dbm > -100",
        "for": "2m", "annotations": {"summary": "weak {{ device_no }} {{ rssi_dbm }} dBm"}}
OFFLINE = {"name": "DeviceOffline", "kind": "device", "condition": "online == False", "for": "0s",
           "annotations": {"summary": "{{ device_no }} offline"}}


def alerts_config(*rules: dict[str, Any], **extra: Any) -> AlertsConfig:
    notifier = {"type": "log", "name": "rec", "group_wait": "10s", "group_interval": "1m",
                "repeat_interval": "1h", "retry": {"max_attempts": 2, "backoff_initial": "10ms"}}
    return AlertsConfig.model_validate({"enabled": True, "default_rules": False, "rules": list(rules),
                                        "notifiers": [notifier], **extra})


def use_recorders(engine: AlertEngine) -> None:
    """Swap every notifier of the engine for a Recorder with the same configuration."""
    engine.receivers = {name: Recorder(r.config, engine) for name, r in engine.receivers.items()}


def recorder(engine: AlertEngine, name: str = "rec") -> Recorder:
    rec = engine.receivers[name]
    assert isinstance(rec, Recorder)
    return rec


def device(no: str, customer: str = "acme", **fields: Any) -> FieldRecord:
    """A device record with these field values (the others read None)."""
    return FieldRecord("device", {"device_no": no, "online": True, "rssi_dbm": -80, "labels": {"customer": customer},
                                  **fields})


async def settle(engine: AlertEngine, clock: Clock) -> None:
    engine.tick(clock.t)
    assert await engine.drain(5.0)


Make = Callable[..., Awaitable[tuple[AlertEngine, Recorder]]]


@pytest.fixture(name="make")
async def make_engine(tmp_path: Path) -> AsyncIterator[Make]:
    """Engines on a fake clock whose notifiers record what they would deliver."""
    engines: list[AlertEngine] = []

    async def build(config: AlertsConfig, clock: Clock, lines: list[str] | None = None) -> tuple[AlertEngine, Recorder]:
        async def write(batch: list[str]) -> None:
            if lines is not None:
                lines.extend(batch)

        engine = AlertEngine(config, tmp_path, write_points=write, clock=clock)
        use_recorders(engine)
        await engine.start()
        engines.append(engine)
        return engine, engine.receivers.get("rec")  # type: ignore[return-value]

    yield build
    for engine in engines:
        if engine._started:
            await engine.stop(0.5)


def states(engine: AlertEngine) -> dict[str, str]:
    return {a["id"]: a["state"] for a in engine.active()}


async def test_pending_then_firing_after_for_then_resolved_once(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(WEAK), clock)
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    assert states(engine) == {"WeakSignal/d1": "pending"}
    clock.t += 60
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-108), clock.t)
    assert states(engine) == {"WeakSignal/d1": "pending"}
    clock.t += 61
    engine.sweep(clock.t, lambda kind, key: None)
    assert states(engine) == {"WeakSignal/d1": "firing"}
    clock.t += 10
    await settle(engine, clock)
    assert [m["status"] for m in rec.sent] == ["firing"]
    for _ in range(5):  # still firing: evaluated again and again, never notified again
        clock.t += 30
        engine.evaluate("device", "d1", device("d1", rssi_dbm=-111), clock.t)
        await settle(engine, clock)
    assert len(rec.sent) == 1
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-90), clock.t)
    assert states(engine) == {}
    clock.t += 60
    await settle(engine, clock)
    assert [m["status"] for m in rec.sent] == ["firing", "resolved"]
    assert rec.sent[1]["alerts"][0]["state"] == "resolved"


async def test_a_pending_alert_whose_condition_stops_never_fires(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(WEAK), clock)
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    clock.t += 30
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-95), clock.t)
    clock.t += 600
    engine.sweep(clock.t, lambda kind, key: None)
    await settle(engine, clock)
    assert states(engine) == {} and rec.sent == []


async def test_rssi_jittering_around_the_threshold_does_not_flap(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(WEAK), clock)
    jitter = [-106, -104, -107, -103, -105.5, -101, -106, -104, -102, -106, -104] * 6
    for rssi in jitter:  # every 30 s for 33 minutes, crossing -105 each time, never above -100
        engine.evaluate("device", "d1", device("d1", rssi_dbm=rssi), clock.t)
        engine.sweep(clock.t, lambda kind, key: None)
        await settle(engine, clock)
        clock.t += 30
    assert states(engine) == {"WeakSignal/d1": "firing"}
    assert [m["status"] for m in rec.sent] == ["firing"]
    transitions = metrics.ALERT_TRANSITIONS.labels("WeakSignal", "resolved")._value.get()
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-99), clock.t)
    clock.t += 60
    await settle(engine, clock)
    assert [m["status"] for m in rec.sent] == ["firing", "resolved"]
    assert metrics.ALERT_TRANSITIONS.labels("WeakSignal", "resolved")._value.get() == transitions + 1


async def test_keep_firing_for_holds_a_firing_alert_after_the_condition_clears(make: Make) -> None:
    clock = Clock()
    rule = {**OFFLINE, "keep_firing_for": "2m"}
    engine, rec = await make(alerts_config(rule), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    assert states(engine) == {"DeviceOffline/d1": "firing"}
    clock.t += 10
    engine.evaluate("device", "d1", device("d1", online=True), clock.t)
    clock.t += 60
    engine.sweep(clock.t, lambda kind, key: None)
    await settle(engine, clock)
    assert states(engine) == {"DeviceOffline/d1": "firing"}
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)  # back: the clock restarts
    clock.t += 10
    engine.evaluate("device", "d1", device("d1", online=True), clock.t)
    clock.t += 100
    engine.sweep(clock.t, lambda kind, key: None)
    assert states(engine) == {"DeviceOffline/d1": "firing"}
    clock.t += 30
    engine.sweep(clock.t, lambda kind, key: None)
    assert states(engine) == {}
    clock.t += 60
    await settle(engine, clock)
    assert [m["status"] for m in rec.sent] == ["firing", "resolved"]


async def test_300_devices_offline_at_once_make_one_grouped_message(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE, language="en"), clock)
    for i in range(300):
        engine.evaluate("device", f"d{i:03}", device(f"d{i:03}", online=False), clock.t + i * 0.01)
    engine.evaluate("device", "other", device("other", customer="globex", online=False), clock.t)
    clock.t += 5
    await settle(engine, clock)
    assert rec.sent == []  # group_wait: the outage is still arriving
    clock.t += 6
    await settle(engine, clock)
    acme = [m for m in rec.sent if m["groupLabels"].get("customer") == "acme"]
    assert len(acme) == 1 and len(rec.sent) == 2
    message = acme[0]
    assert message["firingCount"] == 300
    assert message["truncatedAlerts"] == 300 - 50
    assert message["title"] == "[FIRING:300] DeviceOffline (customer=acme)"
    assert "- ... and 250 more" in message["text"]
    for i in range(300):
        engine.evaluate("device", f"d{i:03}", device(f"d{i:03}"), clock.t)
    clock.t += 61
    await settle(engine, clock)
    resolved = [m for m in rec.sent if m["status"] == "resolved"]
    assert len(resolved) == 1 and resolved[0]["resolvedCount"] == 300


async def test_repeat_interval_resends_a_still_firing_group(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    clock.t += 11
    await settle(engine, clock)
    for _ in range(59):
        clock.t += 60
        await settle(engine, clock)
    assert len(rec.sent) == 1
    clock.t += 60
    await settle(engine, clock)
    assert len(rec.sent) == 2 and rec.sent[1]["status"] == "firing"


async def test_a_restart_mid_firing_sends_nothing_new(make: Make, tmp_path: Path) -> None:
    clock = Clock()
    config = alerts_config(OFFLINE)
    engine, rec = await make(config, clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    clock.t += 11
    await settle(engine, clock)
    assert len(rec.sent) == 1
    await engine.stop()
    state = json.loads((tmp_path / "alerts" / "state.json").read_text())
    assert state["alerts"][0]["state"] == "firing"

    engine2, rec2 = await make(config, clock)
    assert states(engine2) == {"DeviceOffline/d1": "firing"}
    for _ in range(10):
        clock.t += 60
        engine2.evaluate("device", "d1", device("d1", online=False), clock.t)
        await settle(engine2, clock)
    assert rec2.sent == []
    engine2.evaluate("device", "d1", device("d1"), clock.t)
    clock.t += 60
    await settle(engine2, clock)
    assert [m["status"] for m in rec2.sent] == ["resolved"]


async def test_a_pending_timer_survives_a_restart(make: Make) -> None:
    clock = Clock()
    config = alerts_config(WEAK)
    engine, _ = await make(config, clock)
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    clock.t += 60
    await engine.stop()
    clock.t += 61  # down for a minute: the `for` of 2 minutes elapsed meanwhile
    engine2, rec2 = await make(config, clock)
    assert states(engine2) == {"WeakSignal/d1": "pending"}
    engine2.sweep(clock.t, lambda kind, key: None)
    assert states(engine2) == {"WeakSignal/d1": "firing"}
    alert = engine2.get_alert("WeakSignal/d1")
    assert alert is not None and alert.active_since == T0
    clock.t += 11
    await settle(engine2, clock)
    assert [m["status"] for m in rec2.sent] == ["firing"]


async def test_queued_notifications_survive_a_restart(make: Make) -> None:
    clock = Clock()
    config = alerts_config(OFFLINE, notifiers=[{
        "type": "log", "name": "rec", "group_wait": 0, "retry": {"max_attempts": 50, "backoff_initial": "5s"}}])
    engine, rec = await make(config, clock)
    rec.fail = True
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    engine.tick(clock.t)
    await engine.stop(0.2)
    engine2, rec2 = await make(config, clock)
    assert await engine2.drain(5.0)
    assert [m["status"] for m in rec2.sent] == ["firing"]


async def test_a_silenced_alert_sends_nothing_until_the_silence_ends(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE), clock)
    sid = engine.add_silence(["customer=acme", "alertname=~Device.*"], None, clock.t + 3600, "maintenance", "ops")
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    engine.evaluate("device", "g1", device("g1", customer="globex", online=False), clock.t)
    for _ in range(5):
        clock.t += 60
        await settle(engine, clock)
    assert [m["groupLabels"]["customer"] for m in rec.sent] == ["globex"]
    silenced = {a["entity"]: a["silenced_by"] for a in engine.active()}
    assert silenced == {"d1": sid, "g1": None}
    assert engine.list_silences()[0]["status"] == "active"
    engine.remove_silence(sid)
    clock.t += 60
    await settle(engine, clock)
    assert [m["groupLabels"]["customer"] for m in rec.sent] == ["globex", "acme"]


async def test_an_alert_that_fires_and_resolves_within_a_silence_sends_nothing(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE), clock)
    engine.add_silence(["device_no=d1"], None, clock.t + 3600, "", "")
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    clock.t += 60
    await settle(engine, clock)
    engine.evaluate("device", "d1", device("d1"), clock.t)
    clock.t += 3600
    await settle(engine, clock)
    assert rec.sent == []


async def test_a_receiver_that_is_down_does_not_starve_the_others(make: Make) -> None:
    clock = Clock()
    config = alerts_config(OFFLINE, notifiers=[
        {"type": "log", "name": "down", "group_wait": 0, "retry": {"max_attempts": 3, "backoff_initial": "10ms"}},
        {"type": "log", "name": "up", "group_wait": 0}])
    engine, _ = await make(config, clock)
    down, up = recorder(engine, "down"), recorder(engine, "up")
    down.fail = True
    dropped = metrics.NOTIFICATIONS.labels("down", "dropped")._value.get()
    failed = metrics.NOTIFICATIONS.labels("down", "failed")._value.get()
    sent = metrics.NOTIFICATIONS.labels("up", "sent")._value.get()
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    await settle(engine, clock)
    assert len(up.sent) == 1 and down.sent == []
    assert metrics.NOTIFICATIONS.labels("down", "failed")._value.get() == failed + 3
    assert metrics.NOTIFICATIONS.labels("down", "dropped")._value.get() == dropped + 1
    assert metrics.NOTIFICATIONS.labels("up", "sent")._value.get() == sent + 1


async def test_routing_by_severity_and_labels(make: Make) -> None:
    clock = Clock()
    critical = {**OFFLINE, "name": "Critical", "severity": "critical"}
    config = alerts_config(OFFLINE, critical, notifiers=[
        {"type": "log", "name": "pager", "group_wait": 0, "match": ["severity=critical"]},
        {"type": "log", "name": "acme", "group_wait": 0, "match": ["customer=~acme|initech"]}])
    engine, _ = await make(config, clock)
    pager, acme = recorder(engine, "pager"), recorder(engine, "acme")
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    engine.evaluate("device", "g1", device("g1", customer="globex", online=False), clock.t)
    await settle(engine, clock)
    assert sorted(a["id"] for m in pager.sent for a in m["alerts"]) == ["Critical/d1", "Critical/g1"]
    assert sorted(a["id"] for m in acme.sent for a in m["alerts"]) == ["Critical/d1", "DeviceOffline/d1"]


async def test_forget_resolves_the_alerts_of_a_removed_entity(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE, WEAK), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t)
    clock.t += 11
    await settle(engine, clock)
    engine.forget("device", "d1", clock.t)
    engine.forget("device", "d2", clock.t)
    assert states(engine) == {}
    clock.t += 60
    await settle(engine, clock)
    assert [m["status"] for m in rec.sent] == ["firing", "resolved"]


async def test_every_state_change_becomes_an_alerts_point(make: Make) -> None:
    clock = Clock()
    lines: list[str] = []
    engine, _ = await make(alerts_config(WEAK), clock, lines)
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    clock.t += 121
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-90), clock.t)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-90), clock.t)
    await engine.stop()
    states_written = [line.split('state="')[1].split('"')[0] for line in lines]
    assert states_written == ["pending", "firing", "resolved", "pending", "inactive"]
    assert lines[1].startswith("alerts,customer=acme,entity=d1,kind=device,rule=WeakSignal,severity=warning ")
    assert "value=-110" in lines[1]


async def test_reload_keeps_unchanged_rules_and_resolves_changed_ones(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE, WEAK), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t)
    clock.t += 11
    await settle(engine, clock)
    stricter = {**WEAK, "condition": "rssi_dbm < -108"}  # threshold only: same alerts, state kept
    relabelled = {**OFFLINE, "labels": {"team": "noc"}}  # other labels: other alerts
    engine.reload(alerts_config(relabelled, stricter))
    assert engine.receivers["rec"] is rec  # same notifier configuration: same queue and groups
    assert states(engine) == {"WeakSignal/d2": "pending"}
    clock.t += 61
    await settle(engine, clock)
    assert [m["status"] for m in rec.sent] == ["firing", "resolved"]
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    alert = engine.get_alert("DeviceOffline/d1")
    assert alert is not None and alert.labels["team"] == "noc"


async def test_engine_loop_persists_state_soon_after_a_change(make: Make, tmp_path: Path) -> None:
    clock = Clock()
    engine, _ = await make(alerts_config(OFFLINE), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    path = tmp_path / "alerts" / "state.json"
    for _ in range(100):
        if path.exists() and json.loads(path.read_text())["alerts"]:
            break
        await asyncio.sleep(0.05)
    assert json.loads(path.read_text())["alerts"][0]["key"] == "d1"


async def test_a_corrupt_state_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "state.json").write_text("{not json")
    engine = AlertEngine(alerts_config(OFFLINE), tmp_path, clock=Clock())
    engine.load()
    assert engine.active() == []
    assert list((tmp_path / "alerts").glob("state.json.broken-*"))


def test_time_based_rules_are_swept_for_known_entities(tmp_path: Path) -> None:
    clock = Clock()
    rule = {"name": "NotPolled", "kind": "device", "condition": "poll_age_seconds > 600"}
    engine = AlertEngine(alerts_config(rule), tmp_path, clock=clock)
    engine.evaluate("device", "d1", device("d1", poll_age_seconds=0), clock.t)
    assert engine.active() == []
    clock.t += 601
    engine.sweep(clock.t, lambda kind, key: device(key, poll_age_seconds=601))
    assert states(engine) == {"NotPolled/d1": "firing"}


def test_evaluation_errors_count_as_false(tmp_path: Path) -> None:
    engine = AlertEngine(alerts_config(OFFLINE), tmp_path, clock=Clock())
    rule = {"name": "Typed", "kind": "device", "condition": "device_status < 3"}
    engine = AlertEngine(alerts_config(rule), tmp_path, clock=Clock())
    engine.evaluate("device", "d1", device("d1", device_status="x"), T0)
    assert engine.active() == [] and engine.eval_errors == 1


async def test_alerts_of_a_rule_removed_or_relabelled_while_down_resolve_at_start(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE, WEAK), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t)
    clock.t += 11
    await settle(engine, clock)
    assert len(rec.sent) == 1
    await engine.stop()
    engine2, rec2 = await make(alerts_config({**OFFLINE, "severity": "critical"}), clock)
    assert states(engine2) == {}
    clock.t += 60
    await settle(engine2, clock)
    assert [(m["status"], m["resolvedCount"]) for m in rec2.sent] == [("resolved", 1)]


# --- batches: what the pipeline hands over is evaluated at the next flush ------------------------------


def test_submitted_entities_are_evaluated_at_the_next_flush_not_before(tmp_path: Path) -> None:
    clock = Clock()
    engine = AlertEngine(alerts_config(OFFLINE, WEAK), tmp_path, clock=clock)
    records = [device("d1", online=False), device("d2", rssi_dbm=-110), device("d3")]
    engine.submit("device", ["d1", "d2", "d3"], records)
    assert engine.alerts() == []
    assert engine.flush(clock.t) == 3
    assert states(engine) == {"DeviceOffline/d1": "firing", "WeakSignal/d2": "pending"}
    assert engine.flush(clock.t) == 0  # nothing submitted since


async def test_the_engine_flushes_what_was_handed_over_by_itself(make: Make) -> None:
    clock = Clock()
    engine, _ = await make(alerts_config(OFFLINE), clock)
    engine.submit("device", ["d1"], [device("d1", online=False)])
    for _ in range(100):
        if engine.alerts():
            break
        await asyncio.sleep(0.05)
    assert states(engine) == {"DeviceOffline/d1": "firing"}


def test_an_entity_forgotten_after_its_submission_keeps_no_alert(tmp_path: Path) -> None:
    clock = Clock()
    engine = AlertEngine(alerts_config(OFFLINE), tmp_path, clock=clock)
    engine.submit("device", ["d1", "d2"], [device("d1", online=False), device("d2", online=False)])
    engine.forget("device", "d1", clock.t)
    engine.flush(clock.t)
    assert states(engine) == {"DeviceOffline/d2": "firing"}


def test_an_entity_removed_and_re_added_is_evaluated_from_its_new_observation(tmp_path: Path) -> None:
    from collector.platform.models import DeviceObservation
    from collector.state import FleetState

    state = FleetState(device_interval=60.0)
    state.sync_inventory({"d1": {}}, {})
    engine = AlertEngine(alerts_config(OFFLINE), tmp_path, clock=Clock())
    engine.submit_change(state.observe_device(DeviceObservation(device_no="d1", online_status=1, polled_at=T0)))
    state.sync_inventory({}, {})  # removed...
    engine.forget("device", "d1", T0)
    state.sync_inventory({"d1": {}}, {})  # ...and back, offline now
    engine.submit_change(state.observe_device(DeviceObservation(device_no="d1", online_status=0, polled_at=T0 + 1)))
    assert engine.flush(T0 + 1) == 1
    assert states(engine) == {"DeviceOffline/d1": "firing"}


def test_rules_over_labels_and_over_numbers_are_evaluated_together(tmp_path: Path) -> None:
    by_label = {"name": "AcmeOffline", "kind": "device", "condition": "labels.customer == 'acme' and online == False"}
    engine = AlertEngine(alerts_config(OFFLINE, by_label), tmp_path, clock=Clock())
    engine.submit("device", ["a", "g"], [device("a", online=False), device("g", customer="globex", online=False)])
    engine.flush(T0)
    assert states(engine) == {"DeviceOffline/a": "firing", "DeviceOffline/g": "firing", "AcmeOffline/a": "firing"}


def test_a_record_never_polled_is_not_evaluated_among_real_state(tmp_path: Path) -> None:
    from collector.platform.models import DeviceObservation
    from collector.state import FleetState

    state = FleetState(device_interval=60.0)
    state.sync_inventory({"d1": {}, "d2": {}}, {})
    state.observe_device(DeviceObservation(device_no="d1", online_status=0, rssi_dbm=-110, polled_at=T0,
                                           status_at=T0 - 600))
    stale = {"name": "Stale", "kind": "device", "condition": "staleness_seconds > 3 * poll_interval_seconds"}
    unknown = {"name": "NoSignal", "kind": "device", "condition": "rssi_dbm is None"}
    engine = AlertEngine(alerts_config(OFFLINE, WEAK, stale, unknown), tmp_path, clock=Clock())
    engine.submit("device", ["d1", "d2"], [state.devices["d1"], state.devices["d2"]])  # d2: never polled
    engine.flush(T0)
    assert states(engine) == {"DeviceOffline/d1": "firing", "Stale/d1": "firing", "WeakSignal/d1": "pending"}
    assert engine.eval_errors == 0


def test_the_engine_finds_what_alerts_test_finds(tmp_path: Path) -> None:
    """The default rules over a random fleet: the active alerts are exactly the (rule, entity) pairs
    whose condition holds for `alerts test`'s evaluation."""
    import random

    from collector.alerts.cli import would_fire

    rng = random.Random(7)

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.05 else value

    devices = {f"d{i}": FieldRecord("device", {
        "device_no": f"d{i}", "labels": {"customer": rng.choice(["acme", "globex"])},
        "online": maybe(rng.random() > 0.05), "rssi_dbm": maybe(rng.randint(-120, -60)),
        "battery_percent": maybe(rng.randint(0, 100)), "staleness_seconds": maybe(rng.choice([30.0, 5000.0])),
        "poll_interval_seconds": maybe(300.0)}) for i in range(400)}
    sims = {f"s{i}": FieldRecord("sim", {
        "iccid": f"s{i}", "remaining_ratio": maybe(rng.random()),
        "exhausts_before_cycle_end": maybe(rng.random() < 0.1),
        "days_to_expiry": maybe(rng.uniform(-3, 60)), "sim_status": maybe(rng.choice([4, 4, 4, 5])),
        "internet_status": maybe(rng.choice([1, 1, 2]))}) for i in range(800)}
    config = AlertsConfig.model_validate({"enabled": True, "notifiers": [{"type": "log"}]})
    engine = AlertEngine(config, tmp_path, clock=Clock())
    engine.submit("device", list(devices), list(devices.values()))
    engine.submit("sim", list(sims), list(sims.values()))
    assert engine.flush(T0) == 1200
    expected = {f"{f['rule']}/{f['entity']}" for f in would_fire(engine.rules(), {"device": devices, "sim": sims}, T0)}
    assert len(expected) > 100
    assert {a.id for a in engine.alerts()} == expected


def test_a_pending_alert_fires_at_its_first_evaluation_after_for_without_a_sweep(tmp_path: Path) -> None:
    clock = Clock()
    engine = AlertEngine(alerts_config(WEAK), tmp_path, clock=clock)
    weak = device("d1", rssi_dbm=-110)
    engine.evaluate("device", "d1", weak, clock.t)
    engine.evaluate("device", "d1", weak, clock.t + 119)  # `for` is 2m: not yet
    assert states(engine) == {"WeakSignal/d1": "pending"}
    engine.evaluate("device", "d1", weak, clock.t + 120)
    assert states(engine) == {"WeakSignal/d1": "firing"}
    # Deactivated and pending again: the time of the first activation does not fire the second.
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-90), clock.t + 60)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t + 100)
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t + 150)
    assert states(engine)["WeakSignal/d2"] == "pending"
    engine.evaluate("device", "d2", device("d2", rssi_dbm=-110), clock.t + 220)
    assert states(engine)["WeakSignal/d2"] == "firing"


def test_a_pending_alert_restored_after_a_restart_fires_at_its_next_evaluation(tmp_path: Path) -> None:
    clock = Clock()
    engine = AlertEngine(alerts_config(WEAK), tmp_path, clock=clock)
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    engine.save()
    clock.t += 300  # down for longer than `for`
    again = AlertEngine(alerts_config(WEAK), tmp_path, clock=clock)
    again.load()
    assert states(again) == {"WeakSignal/d1": "pending"}
    again.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    assert states(again) == {"WeakSignal/d1": "firing"}


def test_forty_rules_of_one_kind(tmp_path: Path) -> None:
    def name(t: int) -> str:
        return f"Below{-t}"

    rules = [{"name": name(t), "kind": "device", "condition": f"rssi_dbm < {t}",
              "for": "1m" if t % 2 else "0s"} for t in range(-120, -80)]
    clock = Clock()
    engine = AlertEngine(alerts_config(*rules), tmp_path, clock=clock)
    engine.submit("device", ["d1", "d2"], [device("d1", rssi_dbm=-100), device("d2", rssi_dbm=-85)])
    engine.flush(clock.t)
    fired = {k for k, v in states(engine).items() if v == "firing"}
    assert fired == {f"{name(t)}/d1" for t in range(-99, -80) if t % 2 == 0} | {
        f"{name(t)}/d2" for t in range(-84, -80) if t % 2 == 0}
    clock.t += 60
    engine.submit("device", ["d1", "d2"], [device("d1", rssi_dbm=-100), device("d2", rssi_dbm=-70)])
    engine.flush(clock.t)
    assert set(states(engine)) == {f"{name(t)}/d1" for t in range(-99, -80)}
    assert set(states(engine).values()) == {"firing"}


def test_a_flapping_pending_alert_fires_only_after_holding_for_its_whole_for(tmp_path: Path) -> None:
    long_for = {**WEAK, "for": "7d", "clear": None}
    clock = Clock()
    engine = AlertEngine(alerts_config(long_for), tmp_path, clock=clock)
    for i in range(500):  # pending, inactive, pending again... every five minutes, for 1.7 days
        engine.evaluate("device", "d1", device("d1", rssi_dbm=-110 if i % 2 == 0 else -90), clock.t + 300 * i)
    started = clock.t + 300 * 500
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), started)
    alert = engine.get_alert("WeakSignal/d1")
    assert alert is not None and alert.active_since == started
    engine.sweep(started + 7 * 86400 - 1, lambda kind, key: device(key, rssi_dbm=-110))
    assert states(engine) == {"WeakSignal/d1": "pending"}
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), started + 7 * 86400)
    assert states(engine) == {"WeakSignal/d1": "firing"}


# --- restarts and entities without data -------------------------------------------------------------------


def _fleet(*device_nos: str) -> Any:
    from collector.state import FleetState

    state = FleetState(device_interval=60.0)
    state.sync_inventory({no: {"customer": "acme"} for no in device_nos}, {})
    return state


def _observation(device_no: str, at: float, **fields: Any) -> Any:
    from collector.platform.models import DeviceObservation

    return DeviceObservation(device_no=device_no, polled_at=at, status_at=at - 30, **{
        "online_status": 1, "rssi_dbm": -80, **fields})


async def test_a_pending_alert_whose_for_ran_out_while_stopped_fires_at_the_entity_first_poll(
        make: Make) -> None:
    clock = Clock()
    offline = {**OFFLINE, "for": "10m"}
    config = alerts_config(offline, WEAK)
    state = _fleet("d1")
    engine, _ = await make(config, clock)
    engine.submit_change(state.observe_device(_observation("d1", clock.t, online_status=0)))
    engine.flush(clock.t)
    assert states(engine) == {"DeviceOffline/d1": "pending"}
    await engine.stop()

    clock.t += 15 * 60  # down for longer than the `for`
    state = _fleet("d1")  # a new process: the device is known, not polled yet
    engine2 = AlertEngine(config, engine.path.parent.parent, clock=clock, lookup=state.record)
    use_recorders(engine2)
    await engine2.start()
    try:
        engine2.sweep(clock.t)  # before the first poll: nothing to say, the timer is kept
        assert states(engine2) == {"DeviceOffline/d1": "pending"}
        clock.t += 20
        engine2.submit_change(state.observe_device(_observation("d1", clock.t, online_status=0)))
        engine2.flush(clock.t)
        assert states(engine2) == {"DeviceOffline/d1": "firing"}  # at once, not 10 minutes later
        alert = engine2.get_alert("DeviceOffline/d1")
        assert alert is not None and alert.active_since == T0 and alert.fired_at == clock.t
    finally:
        await engine2.stop(0.5)


def test_a_never_polled_record_neither_renders_nor_ends_an_alert(tmp_path: Path) -> None:
    clock = Clock()
    weak = {**WEAK, "for": "1m"}
    state = _fleet("d1", "d2")
    engine = AlertEngine(alerts_config(weak), tmp_path, clock=clock, lookup=state.record)
    engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
    engine.save()
    clock.t += 120
    again = AlertEngine(alerts_config(weak), tmp_path, clock=clock, lookup=state.record)
    again.load()
    again.evaluate("device", "d1", state.devices["d1"], clock.t)  # the record of a device not polled yet
    again.evaluate("device", "d2", state.devices["d2"], clock.t)
    again.sweep(clock.t)
    [alert] = again.alerts()
    assert alert.state == "pending" and alert.annotations == {"summary": "weak d1 -110 dBm"}
    assert "unknown" not in str(alert.public())


def test_a_rule_that_fails_to_evaluate_is_counted_by_rule(tmp_path: Path) -> None:
    def errors() -> float:
        return metrics.REGISTRY.get_sample_value("iot_collector_alert_evaluation_errors_total",
                                                 {"rule": "Typed"}) or 0.0

    rule = {"name": "Typed", "kind": "device", "condition": "device_status < 3"}
    hysteresis = {"name": "TypedClear", "kind": "device", "condition": "rssi_dbm < -105",
                  "clear": "device_status > 3"}
    engine = AlertEngine(alerts_config(rule, hysteresis), tmp_path, clock=Clock())
    before = errors()
    assert metrics.REGISTRY.get_sample_value("iot_collector_alert_evaluation_errors_total",
                                             {"rule": "TypedClear"}) is not None  # exported from the start
    with capture_logs() as logs:
        for i in range(3):
            engine.evaluate("device", f"d{i}", device(f"d{i}", device_status="x"), T0)
    assert engine.active() == [] and errors() == before + 3
    # One warning for the rule, not one per entity, naming what failed.
    [line] = [e for e in logs if e["event"].startswith("alert rule failed")]
    assert line["rule"] == "Typed" and "TypeError" in line["error"]
    engine.evaluate("device", "w", device("w", rssi_dbm=-110, device_status="x"), T0)
    engine.evaluate("device", "w", device("w", rssi_dbm=-90, device_status="x"), T0 + 1)
    assert states(engine) == {"TypedClear/w": "firing"}  # a clear condition that fails has not cleared


async def test_the_engine_sweeps_every_evaluation_interval_by_itself(tmp_path: Path) -> None:
    clock = Clock()
    lookups: list[str] = []

    def lookup(kind: str, key: str) -> Any:
        lookups.append(key)
        return device(key, rssi_dbm=-110)

    engine = AlertEngine(alerts_config(WEAK, evaluation_interval="1s"), tmp_path, clock=clock,
                         lookup=lookup)
    await engine.start()
    try:
        engine.evaluate("device", "d1", device("d1", rssi_dbm=-110), clock.t)
        clock.t += 121
        await asyncio.sleep(0.4)
        assert states(engine) == {"WeakSignal/d1": "pending"} and lookups == []  # not before the interval
        for _ in range(100):
            if states(engine) == {"WeakSignal/d1": "firing"}:
                break
            await asyncio.sleep(0.05)
        assert states(engine) == {"WeakSignal/d1": "firing"} and lookups == ["d1"]
    finally:
        await engine.stop(0.5)


async def test_a_receiver_asking_to_retry_after_is_given_that_time(tmp_path: Path) -> None:
    """A webhook and an Alertmanager answering 429 with Retry-After: 1 are called again no sooner
    than a second later, though the notifier's own backoff would retry after 10 ms."""
    import time

    from aiohttp import web

    calls: dict[str, list[float]] = {"/hook": [], "/api/v2/alerts": []}

    async def answer(request: web.Request) -> web.Response:
        seen = calls[request.path]
        seen.append(time.monotonic())
        if len(seen) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", answer)
    app.router.add_post("/api/v2/alerts", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    retry = {"max_attempts": 5, "backoff_initial": "10ms", "backoff_max": "10ms"}
    config = alerts_config(OFFLINE, notifiers=[
        {"type": "webhook", "name": "hook", "url": f"http://127.0.0.1:{port}/hook", "group_wait": 0, "retry": retry},
        {"type": "alertmanager", "url": f"http://127.0.0.1:{port}", "retry": retry}])
    engine = AlertEngine(config, tmp_path, clock=Clock())
    await engine.start()
    try:
        engine.evaluate("device", "d1", device("d1", online=False), T0)
        engine.tick(T0)
        for _ in range(100):
            if all(len(times) == 2 for times in calls.values()):
                break
            await asyncio.sleep(0.05)
        for path, times in calls.items():
            assert len(times) == 2 and times[1] - times[0] >= 0.95, (path, times)
    finally:
        await engine.stop(0.5)
        await runner.cleanup()
