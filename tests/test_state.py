"""The fleet state: derived values, inventory sync, events written once."""

from __future__ import annotations

import datetime as dt
import tracemalloc
from dataclasses import replace
from itertools import pairwise

from collector.platform.models import DAY, DeviceEvent, DeviceObservation, Location, SimObservation
from collector.state import (
    FIELDS,
    USAGE_SAMPLES,
    USAGE_SPACING_SECONDS,
    USAGE_WINDOW_SECONDS,
    FieldRecord,
    FleetState,
    SimState,
    UsageHistory,
    add_month,
    field_values,
)

T0 = dt.datetime(2026, 1, 31, 16, 0, tzinfo=dt.UTC).timestamp()


def device(no: str, at: float, used: int, *, events: tuple[DeviceEvent, ...] = (),
           effective: int = 1) -> DeviceObservation:
    sims = (SimObservation(iccid=f"{no}-a", device_no=no, slot=1, total_bytes=1000, used_bytes=used,
                           cycle_start=T0, polled_at=at),
            SimObservation(iccid=f"{no}-b", device_no=no, slot=2, total_bytes=1000, used_bytes=0, polled_at=at))
    return DeviceObservation(device_no=no, online_status=1, effective_sim=effective, status_at=at - 90,
                             events=events, sims=sims, polled_at=at)


def test_add_month_clamps_to_the_last_day() -> None:
    assert dt.datetime.fromtimestamp(add_month(T0), dt.UTC) == dt.datetime(2026, 2, 28, 16, 0, tzinfo=dt.UTC)
    dec = dt.datetime(2026, 12, 15, tzinfo=dt.UTC).timestamp()
    assert dt.datetime.fromtimestamp(add_month(dec), dt.UTC).date() == dt.date(2027, 1, 15)


def test_usage_rate_forecast_and_reset_at_a_new_cycle() -> None:
    sim = SimState("x", {})
    sim.obs = SimObservation(iccid="x", total_bytes=10_000, used_bytes=4_000, cycle_start=T0,
                             expires_at=T0 + 7200 + 2.5 * DAY, polled_at=T0 + 7200)
    sim.record_usage(T0 + 3600, 2_000)
    sim.record_usage(T0 + 7200, 4_000)
    sim.derive()
    assert sim.usage.rate() == sim.usage_rate_bytes_per_second == 2_000 / 3600
    fields = field_values("sim", sim, T0 + 9000)
    assert fields["remaining_bytes"] == 6_000 and fields["remaining_ratio"] == 0.6
    assert fields["seconds_to_exhaustion"] == 6_000 / (2_000 / 3600)
    assert fields["exhausts_before_cycle_end"] is True  # 3 hours left at this rate, weeks in the cycle
    assert fields["seconds_to_cycle_end"] == add_month(T0) - (T0 + 7200)  # as of the poll, not the clock
    assert fields["days_to_expiry"] == 2.5
    sim.record_usage(T0 + 10800, 100)  # usage went down: a new cycle, the old rate is meaningless
    assert sim.usage.rate() is None


def test_a_usage_history_spans_a_day_of_readings_so_a_burst_does_not_make_its_rate() -> None:
    # A reading every 10 minutes (the platform's flow refresh) for three days: 2 GB an hour from
    # 18:00 to 21:00, 10 MB an hour otherwise, so 6.2 GB a day.
    history, used, at, hours = UsageHistory(), 0, T0, 0.0
    for _ in range((2 * 24 + 20) * 6):
        at += 600
        hours = (at - T0) / 3600
        used += (2_000_000_000 if 18 <= hours % 24 < 21 else 10_000_000) // 6
        history.record(at, used)
    history.record(at, 10**15)  # not newer than the last: ignored
    readings = history.readings()
    assert len(history) == len(readings) <= USAGE_SAMPLES and readings[-1] == (at, used)
    times = [t for t, _ in readings]
    assert at - USAGE_WINDOW_SECONDS <= times[0] <= at - USAGE_WINDOW_SECONDS + 2 * USAGE_SPACING_SECONDS
    assert all(b - a >= USAGE_SPACING_SECONDS - 600 for a, b in pairwise(times[:-1]))
    # At 20:00, in the burst, the rate is about a day's usage (4.5-6.2 GB over the 22.5-24 h held),
    # not the burst's: over the last 16 refreshes that would be 38 GB a day.
    assert hours % 24 == 20
    rate = history.rate()
    assert rate is not None and 4e9 / 86400 < rate < 7e9 / 86400, rate * 86400
    # A reading a day later leaves the oldest ones behind, but the two newest make a rate.
    history.record(at + USAGE_WINDOW_SECONDS * 2, used + 2**40)
    assert history.readings() == [(at, used), (at + USAGE_WINDOW_SECONDS * 2, used + 2**40)]
    # Usage that went down starts again; so does a history restored from readings out of order.
    history.record(at + USAGE_WINDOW_SECONDS * 3, 5)
    assert history.readings() == [(at + USAGE_WINDOW_SECONDS * 3, 5)] and history.rate() is None
    assert UsageHistory([(T0 + 600, 3), (T0, 1), (T0 + 1200, 9)]).readings() == [(T0 + 600, 3), (T0 + 1200, 9)]


def test_a_sims_memory_does_not_grow_as_its_usage_history_fills() -> None:
    histories = [UsageHistory() for _ in range(1_000)]
    for history in histories:
        history.record(T0, 0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for step in range(1, 3 * USAGE_SAMPLES):
            for history in histories:
                history.record(T0 + USAGE_SPACING_SECONDS * step, 1_000 * step)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(len(h) == USAGE_SAMPLES for h in histories)
    assert grown < 1_000, grown  # no byte per SIM: the block was allocated at the first reading

def test_slow_usage_does_not_exhaust_before_the_cycle_ends_and_unknowns_stay_unknown() -> None:
    sim = SimState("x", {})
    sim.obs = SimObservation(iccid="x", total_bytes=10_000, used_bytes=4_000, cycle_start=T0, polled_at=T0 + 7200)
    sim.record_usage(T0 + 3600, 3_999)
    sim.record_usage(T0 + 7200, 4_000)  # one byte an hour: decades of data left
    sim.derive()
    assert sim.exhausts_before_cycle_end is False and sim.days_to_expiry is None
    unknown = SimState("y", {})
    unknown.obs = SimObservation(iccid="y", used_bytes=5, polled_at=T0)  # no allowance reported
    unknown.derive()
    values = field_values("sim", unknown, T0)
    assert values["remaining_ratio"] is None and values["exhausts_before_cycle_end"] is None
    assert values["remaining_bytes"] is None and values["polled"] is True


def test_staleness_is_poll_time_minus_platform_refresh() -> None:
    state = FleetState(device_interval=300)
    state.sync_inventory({"d1": {"customer": "acme"}}, {})
    state.observe_device(device("d1", T0, 10))
    fields = field_values("device", state.devices["d1"], T0 + 30)
    assert fields["staleness_seconds"] == 90 and fields["status_age_seconds"] == 120
    assert fields["poll_interval_seconds"] == 300 and fields["online"] is True
    assert fields["labels"] == {"customer": "acme"}


def test_every_field_of_every_kind_reads_from_a_record_polled_or_not() -> None:
    state = FleetState(device_interval=60)
    state.sync_inventory({"d1": {}, "d2": {}}, {})
    state.observe_device(device("d1", T0, 10))
    for kind, record in (("device", state.devices["d1"]), ("device", state.devices["d2"]),
                         ("sim", state.sims["d1-a"]), ("account", state.account)):
        values = field_values(kind, record, T0 + 60)
        assert set(values) == set(FIELDS[kind])
    never = field_values("device", state.devices["d2"], T0)
    assert never["polled"] is False and never["rssi_dbm"] is None and never["status_age_seconds"] is None
    for kind, paths in FIELDS.items():  # a FieldRecord (files, the collector itself) answers every path
        assert all(path.rsplit(".", 1)[-1] == name for name, path in paths.items()), kind
        assert field_values(kind, FieldRecord(kind, {name: 7 for name in paths if name != "labels"}), T0) == {
            **{name: 7 for name in paths}, "labels": {}}


def test_sims_are_discovered_inherit_labels_and_leave_with_their_device() -> None:
    state = FleetState()
    state.sync_inventory({"d1": {"customer": "acme"}, "d2": {"customer": "globex"}}, {"card-x": {"group": "spare"}})
    change = state.observe_device(device("d1", T0, 10, effective=2))
    assert set(change.sims) == {"d1-a", "d1-b"}
    assert state.sims["d1-a"].labels == {"customer": "acme"}
    assert state.sims["d1-b"].effective is True and state.sims["d1-a"].effective is False
    assert state.devices["d1"].obs is not None and state.devices["d1"].obs.sims == ()  # kept once, in SimState
    removed_devices, removed_sims = state.sync_inventory({"d2": {"customer": "globex"}}, {"card-x": {}})
    assert removed_devices == ["d1"] and set(removed_sims) == {"d1-a", "d1-b"}
    assert set(state.sims) == {"card-x"}


def test_device_events_are_new_only_once() -> None:
    state = FleetState()
    state.sync_inventory({"d1": {}}, {})
    e1 = DeviceEvent("d1", T0 - 100, 251, "1")
    e2 = DeviceEvent("d1", T0 - 50, 251, "2")
    assert state.observe_device(device("d1", T0, 10, events=(e1,))).new_events == (e1,)
    assert state.observe_device(device("d1", T0 + 60, 11, events=(e1, e2))).new_events == (e2,)
    assert state.observe_device(device("d1", T0 + 120, 12, events=(e1, e2))).new_events == ()


def test_a_poll_for_a_device_removed_meanwhile_is_ignored() -> None:
    state = FleetState()
    state.sync_inventory({}, {})
    assert state.observe_device(device("gone", T0, 1)).devices == ()
    assert "gone" not in state.devices


def test_rule_fields_read_the_latest_observation_of_every_endpoint() -> None:
    """rssi_dbm, battery_percent, sim_status and internet_status are read from the observation the
    record holds: a device poll and a card status poll both show at once, unknown reads None."""
    from dataclasses import replace

    from collector.endpoints import ENDPOINTS

    state = FleetState(device_interval=60)
    state.sync_inventory({"d1": {}}, {})
    obs = replace(device("d1", T0, 10), rssi_dbm=-97, battery_percent=41)
    obs = replace(obs, sims=(replace(obs.sims[0], sim_status=4, internet_status=1), obs.sims[1]))
    state.observe_device(obs)
    d, s = state.devices["d1"], state.sims["d1-a"]

    def read() -> tuple[object, ...]:
        device_fields, sim_fields = field_values("device", d, T0), field_values("sim", s, T0)
        return (device_fields["rssi_dbm"], device_fields["battery_percent"], sim_fields["sim_status"],
                sim_fields["internet_status"])

    assert read() == (-97, 41, 4, 1)
    ENDPOINTS["card_status"].observe(state, [SimObservation(iccid="d1-a", sim_status=5, internet_status=2,
                                                            polled_at=T0 + 60)])
    assert read() == (-97, 41, 5, 2)
    state.observe_device(replace(device("d1", T0 + 120, 20), rssi_dbm=None, battery_percent=12))
    assert read() == (None, 12, None, None)  # the device's answer did not report them


def test_a_sim_in_a_device_keeps_its_card_entry_labels_after_a_poll() -> None:
    state = FleetState()
    state.sync_inventory({"d1": {"customer": "acme"}}, {"d1-b": {"plan": "big"}})
    state.observe_device(device("d1", T0, 10))
    assert state.sims["d1-b"].labels == {"customer": "acme", "plan": "big"}
    assert state.sims["d1-a"].labels == {"customer": "acme"}


def test_a_card_usage_poll_extends_the_usage_history_and_keeps_what_it_does_not_report() -> None:
    from collector.endpoints import ENDPOINTS

    state = FleetState()
    state.sync_inventory({"d1": {}}, {})
    state.observe_device(device("d1", T0, 1_000))
    usage = ENDPOINTS["card_usage"]
    change = usage.observe(state, [SimObservation(iccid="d1-a", total_bytes=1000, used_bytes=1_000 + 3600,
                                                  polled_at=T0 + 3600), SimObservation(iccid="unknown")])
    sim = state.sims["d1-a"]
    assert change.sims == ("d1-a",) and change.sim_records == (sim,)
    assert sim.obs is not None and sim.obs.cycle_start == T0 and sim.obs.slot == 1  # kept from the device poll
    assert sim.usage_rate_bytes_per_second == 1.0  # 3600 bytes in an hour
    assert field_values("sim", sim, T0 + 3600)["remaining_bytes"] == 0


def test_a_device_that_has_not_moved_keeps_its_location_object() -> None:
    state = FleetState()
    state.sync_inventory({"d1": {}}, {})
    here, there = Location("11", "1101", "Beijing"), Location("31", "3101", "Shanghai")
    state.observe_device(replace(device("d1", T0, 10), location=here))
    state.observe_device(replace(device("d1", T0 + 300, 20), location=Location("11", "1101", "Beijing")))
    held = state.devices["d1"].obs
    assert held is not None and held.location is here and held.polled_at == T0 + 300 and held.sims == ()
    state.observe_device(replace(device("d1", T0 + 600, 30), location=there))
    held = state.devices["d1"].obs
    assert held is not None and held.location is there
    state.observe_device(device("d1", T0 + 900, 40))  # an answer without a location has none
    held = state.devices["d1"].obs
    assert held is not None and held.location is None
