"""The parts of `probe` and `capture`, one module each: the recipe catalogue, how answers are
classified, which paths count as reads, the comparison of an answer with the wire tables, the flow
unit inference, the configuration rewrite, and the scrubbing of captured answers."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from collector.config import ConfigError, PlatformConfig, SignConfig, parse_config, yaml_load
from collector.endpoints import ENDPOINTS
from collector.firstcontact import recipes
from collector.firstcontact.flowunit import infer_flow_unit
from collector.firstcontact.probe import named_param
from collector.firstcontact.scrub import Pseudonymiser, cut_echoes, remove_secrets
from collector.firstcontact.session import classify
from collector.firstcontact.settings import Discovered, apply, rewrite
from collector.firstcontact.shapes import compare, example, mask, similarity
from collector.platform.client import is_read_path
from collector.platform.signing import Signer

SAMPLE = json.loads((Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_text())


# --- the recipe catalogue -----------------------------------------------------------------------------------


def test_every_recipe_of_the_catalogue_is_a_platform_sign_setting_and_none_repeats() -> None:
    catalogue = recipes.catalogue()
    for recipe in catalogue:
        assert SignConfig.model_validate(recipes.as_setting(recipe)) == recipe
    keys = [tuple(recipes.as_setting(r).values()) for r in catalogue]
    assert len(keys) == len(set(keys))


def test_the_catalogue_covers_the_families_common_in_chinese_open_apis() -> None:
    catalogue = recipes.catalogue()
    assert {r.hash for r in catalogue} == {"md5", "sha1", "sha256", "hmac-md5", "hmac-sha256"}
    assert {r.case for r in catalogue} == {"lower", "upper"}
    assert {r.timestamp for r in catalogue} == {"seconds", "milliseconds"}
    templates = {r.template for r in catalogue}
    for wanted in ("{body}&key={secret}", "{body}&secret={secret}", "{body}{secret}",  # sorted form + secret
                   "{appID}{timestamp}{secret}", "{appID}{secret}{timestamp}", "{secret}{appID}{timestamp}",
                   "{appID}{traceID}{timestamp}{secret}", "{appID}{body}{timestamp}{secret}"):
        assert wanted in templates
    assert any("{body}" not in t and "{traceID}" in t for t in templates)
    assert any("{body}" not in t and "{traceID}" not in t for t in templates)


def test_the_likeliest_recipes_come_first_and_the_preferred_timestamp_unit_leads() -> None:
    catalogue = recipes.catalogue()
    first = [(r.hash, r.template, r.case) for r in catalogue[:4]]
    assert ("md5", "{appID}{timestamp}{secret}", "upper") in first
    assert ("md5", "{body}&key={secret}", "upper") in first
    assert all(r.timestamp == "seconds" for r in catalogue[:40])
    assert all(r.timestamp == "milliseconds" for r in recipes.catalogue("milliseconds")[:40])


def test_a_catalogue_recipe_is_what_the_client_signs_with() -> None:
    recipe = SignConfig(hash="md5", template="{appID}{timestamp}{secret}", case="upper")
    signer = Signer.from_config(recipe, "k")
    assert signer.sign({"appID": "a", "timestamp": "1"}, {}) == hashlib.md5(b"a1k").hexdigest().upper()


# --- answers and paths --------------------------------------------------------------------------------------


PLATFORM = PlatformConfig()


@pytest.mark.parametrize(("status", "envelope", "kind"), [
    (200, {"code": 0, "message": "操作成功"}, "ok"),
    (200, {"code": 40001, "message": "签名错误"}, "auth"),
    (200, {"code": 10086, "message": "验签失败"}, "auth"),
    (200, {"code": 1, "message": "invalid sign"}, "auth"),
    (200, {"code": 40002, "message": "appID不存在"}, "app"),
    (200, {"code": 40003, "message": "请求时间戳无效或已过期"}, "timestamp"),
    (200, {"code": 500, "message": "timestamp expired"}, "timestamp"),
    (404, {"code": 40400, "message": "接口不存在"}, "no_path"),
    (200, {"code": 1004, "message": "接口不存在"}, "no_path"),
    (200, {"code": 40404, "message": "设备不存在"}, "api_error"),
    (200, {"code": 40000, "message": "缺少参数iccids"}, "api_error"),
    (200, {"code": 42900, "message": "请求过于频繁"}, "rate_limited"),
    (401, None, "auth"),
    (403, None, "auth"),
    (404, None, "no_path"),
    (502, None, "http_error"),
    (200, None, "not_json"),
])
def test_answers_are_classified_by_code_status_and_words(status: int, envelope: dict[str, Any] | None,
                                                          kind: str) -> None:
    code = None if envelope is None else envelope["code"]
    message = "" if envelope is None else envelope["message"]
    assert classify(status, envelope, code, message, PLATFORM) == kind


def test_a_configured_auth_code_is_an_auth_answer_whatever_its_message() -> None:
    platform = PlatformConfig.model_validate({"error_codes": {"auth": [7]}})
    assert classify(200, {"code": 7}, 7, "失败", platform) == "auth"


@pytest.mark.parametrize(("path", "read"), [
    ("/openapi/iot/queryDeviceFlow", True), ("/openapi/iot/querySimRealFlow", True),
    ("/openapi/iot/queryAccountAssets", True), ("/openapi/iot/card/status", True), ("/v2/card/realFlow", True),
    ("/openapi/iot/account/assets", True), ("/openapi/iot/deviceReboot", False), ("/openapi/iot/simStop", False),
    ("/openapi/iot/batchSuspend", False), ("/openapi/iot/card/stop", False), ("/openapi/iot/updateWifi", False),
    ("/openapi/iot/querySimSpeedLimit", False), ("/openapi/iot/setCardLimit", False), ("/", False),
])
def test_only_read_paths_are_requested(path: str, read: bool) -> None:
    assert is_read_path(path) is read


@pytest.mark.parametrize(("message", "param"), [
    ("缺少参数cardNos", "cardNos"), ("missing parameter: iccids", "iccids"), ("参数cardNos不能为空", "cardNos"),
    ("Missing required parameter 'simNos'", "simNos"), ("设备不存在", ""), ("参数错误", ""), ("参数sign错误", ""),
])
def test_a_parameter_the_platform_names_is_tried_next(message: str, param: str) -> None:
    assert named_param(message) == param


# --- an answer compared with the wire tables ----------------------------------------------------------------


def test_the_documented_sample_has_every_field_the_parser_reads() -> None:
    report = compare(ENDPOINTS["device_flow"], SAMPLE["data"])
    assert report.missing() == [] and report.wrong() == [] and report.proposals == []
    assert report.records == {"data": 1, "device": 1, "location": 1, "event": 3, "sim": 2}
    device = report.unknown["device"]
    assert device["wifiPass"] == device["webPassword"] == "<secret, not shown>"
    assert device["mainIccid"] == "8986************0999" and "mainSimNo" in device


def test_renamed_fields_are_reported_missing_with_a_fields_proposal() -> None:
    data = copy.deepcopy(SAMPLE["data"])
    device = data["device"]
    device["signal_rssi"] = device.pop("rssi")
    device["Electric"] = device.pop("electric")
    data["simList"] = data.pop("sims")
    report = compare(ENDPOINTS["device_flow"], data)
    assert {f.key for f in report.missing()} == {"rssi", "electric", "sims"}
    assert {p.setting for p in report.proposals} == {
        "platform.fields.device_flow.rssi_dbm: signal_rssi",
        "platform.fields.device_flow.battery_percent: Electric",
        "platform.fields.device_flow.sims: simList",
    }
    applied = compare(ENDPOINTS["device_flow"], data, {"rssi_dbm": "signal_rssi", "battery_percent": "Electric",
                                                      "sims": "simList"})
    assert applied.missing() == [] and applied.records["sim"] == 2


def test_a_field_two_records_share_is_proposed_with_its_record() -> None:
    data = copy.deepcopy(SAMPLE["data"])
    data["device"]["onlineState"] = data["device"].pop("onlineStatus")
    report = compare(ENDPOINTS["device_flow"], data)
    assert [p.setting for p in report.proposals] == ["platform.fields.device_flow.device.online_status: onlineState"]


def test_values_of_an_unusable_type_and_tolerated_types_are_told_apart() -> None:
    data = copy.deepcopy(SAMPLE["data"])
    data["device"]["rssi"] = "strong"
    data["device"]["electric"] = "87"
    report = compare(ENDPOINTS["device_flow"], data)
    assert [(f.key, f.got, f.example) for f in report.wrong()] == [("rssi", "string", "strong")]
    tolerated = [(f.key, f.got) for f in report.findings if f.problem == "tolerated"]
    assert ("electric", "string") in tolerated


def test_a_card_list_under_an_unusual_key_is_proposed_as_records() -> None:
    data = {"total": 1, "cardList": [{"iccid": "89860000000000000001", "simStatus": 2}]}
    report = compare(ENDPOINTS["card_status"], data)
    assert "expected an array of records" in report.structure
    assert [p.setting for p in report.proposals] == ["platform.fields.card_status.records: cardList"]


def test_a_list_wrapped_under_a_usual_key_is_not_an_unknown_field() -> None:
    report = compare(ENDPOINTS["card_status"], {"list": [{"iccid": "1", "simNo": "2", "simStatus": 1,
                                                          "onlineStatus": 1, "internetStatus": 1,
                                                          "lastSimStatusAt": "2025-01-01 00:00:00"}]})
    assert report.unknown == {} and report.missing() == [] and report.records["sim"] == 1


def test_similar_names_are_case_spelling_and_small_edits() -> None:
    assert similarity("onlineStatus", "online_status") == 0
    assert similarity("rssi", "RSSI") == 0
    assert similarity("electric", "electirc") is not None
    assert similarity("sims", "simList") is not None
    assert similarity("rssi", "balance") is None


def test_reports_mask_ids_and_hide_secrets() -> None:
    assert mask("89860886271234560999") == "8986************0999"
    assert mask("12345") == "1***5"
    assert example("wifiPass", "hunter22") == "<secret, not shown>"
    assert example("deviceNo", "865214078636124") == "8652*******6124"
    assert example("softVersion", "V1.2") == "V1.2"


# --- the flow unit ------------------------------------------------------------------------------------------


def test_the_sample_package_reads_as_kib_with_the_reasoning_shown() -> None:
    inference = infer_flow_unit([104857600, 104857600])
    assert inference.unit == "KiB" and inference.confidence == "likely"
    assert "100 GiB (a common package size) if KiB" in inference.reasoning[0]
    assert "100 MiB" in inference.reasoning[0] and "if B" in inference.reasoning[0]
    assert inference.as_json()["inference"] is True


@pytest.mark.parametrize(("totals", "unit"), [
    ([10 * 1024, 100 * 1024, 500 * 1024], "MiB"),           # 10, 100, 500 GiB in MiB
    ([20 * 1024**3, 100 * 1024**3], "B"),                     # in bytes
    ([10 * 1024**2, 30 * 1024**2, 50 * 1024**2], "KiB"),    # 10, 30, 50 GiB in KiB
    ([1024.5, 2048], "MiB"),                                  # a fraction cannot be bytes
])
def test_the_unit_that_makes_package_sizes_round_wins(totals: list[float], unit: str) -> None:
    assert infer_flow_unit(totals).unit == unit


def test_no_package_size_is_no_inference() -> None:
    inference = infer_flow_unit([0, None, "n/a", True])
    assert inference.unit is None and inference.confidence == "none"


# --- the configuration rewrite ------------------------------------------------------------------------------

CONFIG = """\
# the operator's collector
platform:
  base_url: https://api.example.com   # the vendor's host
  app_id: "0042"
  app_secret: ${APP_SECRET}
  endpoints:
    card_status: {batch_limit: 5}

# devices below
inventory:
  devices:
    - 0012345          # leading zeros matter
    - "865214078636124"
"""

FOUND = Discovered(sign=SignConfig(hash="md5", template="{appID}{timestamp}{secret}", case="upper"),
                   endpoints={"card_status": {"path": "/openapi/iot/card/status", "param": "iccid"}},
                   fields={"device_flow": {"rssi_dbm": "signal"}}, flow_unit="MiB")


def test_the_written_configuration_keeps_references_ids_and_comments_outside_platform() -> None:
    text, kept = rewrite(CONFIG, FOUND)
    assert kept
    assert text.startswith("# the operator's collector\nplatform:\n")
    assert "# devices below\ninventory:\n  devices:\n    - 0012345          # leading zeros matter\n" in text
    data = yaml_load(text)
    platform = data["platform"]
    assert platform["app_secret"] == "${APP_SECRET}" and platform["app_id"] == "0042"
    assert platform["sign"] == {"hash": "md5", "template": "{appID}{timestamp}{secret}", "case": "upper",
                                "timestamp": "seconds"}
    assert platform["endpoints"]["card_status"] == {"batch_limit": 5, "path": "/openapi/iot/card/status",
                                                    "param": "iccid"}
    config = parse_config(data, env={"APP_SECRET": "x"})
    assert config.inventory.devices[0].device_no == "0012345"
    assert config.platform.fields == {"device_flow": {"rssi_dbm": "signal"}} and config.platform.flow_unit == "MiB"


def test_secret_files_and_credentials_stay_references() -> None:
    text, _ = rewrite("platform:\n  app_id: a\n  app_secret_credential: vendor-secret\n", FOUND)
    assert "app_secret_credential: vendor-secret" in text and "app_secret:" not in text


def test_a_flow_style_document_is_rewritten_whole_and_says_comments_were_lost() -> None:
    text, kept = rewrite("{platform: {app_id: a, app_secret: b}, inventory: {devices: [0012345]}}", FOUND)
    assert not kept
    data = yaml_load(text)
    assert data["inventory"]["devices"][0].source == "0012345"
    assert data["platform"]["sign"]["case"] == "upper"


def test_a_configuration_without_platform_gets_the_section_appended() -> None:
    text, kept = rewrite("inventory:\n  devices: [1]  # one\n", FOUND)
    assert kept and text.startswith("inventory:\n  devices: [1]  # one\nplatform:\n")


def test_the_discovered_settings_apply_to_the_running_configuration() -> None:
    platform = PlatformConfig.model_validate({"app_id": "a", "app_secret": "b",
                                              "endpoints": {"card_status": {"batch_limit": 5}}})
    applied = apply(platform, FOUND)
    spec = applied.endpoint_specs()["card_status"]
    assert (spec.path, spec.param, spec.batch_limit) == ("/openapi/iot/card/status", "iccid", 5)
    assert applied.sign.case == "upper" and applied.flow_unit_bytes == 1024**2
    assert applied.app_secret is not None and applied.app_secret.get_secret_value() == "b"


def test_discovered_fields_are_valid_configuration() -> None:
    with pytest.raises(ConfigError):
        parse_config({"platform": {"app_id": "a", "app_secret": "b", "fields": {"device_flow": {"nope": "x"}}}})
    parse_config({"platform": {"app_id": "a", "app_secret": "b", **FOUND.settings()}})


# --- scrubbing captured answers -----------------------------------------------------------------------------


def test_secret_keys_are_removed_at_any_depth_and_their_echoes_cut() -> None:
    answer = {"code": 0, "data": {"device": {"wifiPass": "hunter2hunter", "wifiName": "cafe", "nested": [
        {"accessToken": "tok-123456", "clientSecret": {"value": "deep-secret"}, "webPassword": "pw"},
        {"remark": "password is hunter2hunter", "payPassword": ""}]}}}
    removed: set[str] = set()
    clean = cut_echoes(remove_secrets(answer, removed), removed)
    text = json.dumps(clean)
    assert "hunter2hunter" not in text and "tok-123456" not in text and "deep-secret" not in text
    assert "wifiPass" not in text and "accessToken" not in text and "clientSecret" not in text
    assert clean["data"]["device"]["wifiName"] == "cafe"
    assert clean["data"]["device"]["nested"][1]["remark"] == "password is <removed>"
    assert {"hunter2hunter", "tok-123456", "deep-secret", "pw"} <= removed


def test_pseudonyms_are_consistent_and_keep_the_shape_of_each_id() -> None:
    pseudo = Pseudonymiser(key=b"k" * 32)
    data = copy.deepcopy(SAMPLE["data"])
    pseudo.learn(data)
    fake = pseudo.apply(data)
    device, sims = fake["device"], fake["sims"]
    real = SAMPLE["data"]["device"]
    assert device["deviceNo"] == device["imei"] != real["deviceNo"]
    assert device["mainIccid"] == sims[0]["iccid"] and sims[0]["iccid"] != SAMPLE["data"]["sims"][0]["iccid"]
    for a, b in ((device["mainIccid"], real["mainIccid"]), (device["vice1Iccid"], real["vice1Iccid"])):
        assert len(a) == len(b) and a[:6] == b[:6]
        assert [c.isdigit() for c in a] == [c.isdigit() for c in b]
    assert device["imei"][:8] == real["imei"][:8]
    assert sims[1]["imsi"][:5] == SAMPLE["data"]["sims"][1]["imsi"][:5]
    assert pseudo.fake(real["deviceNo"]) == device["deviceNo"], "the same real value always gives the same fake"
    again = Pseudonymiser(key=b"k" * 32)
    again.learn(SAMPLE["data"])
    assert again.apply(SAMPLE["data"]) == fake
    assert Pseudonymiser().fake(real["deviceNo"]) != device["deviceNo"], "another capture, other fakes"


def test_ids_sent_as_numbers_stay_numbers_of_the_same_length() -> None:
    pseudo = Pseudonymiser(key=b"x" * 32)
    answer = {"deviceNo": 9176069816, "iccid": "898608841925D2210999"}
    pseudo.learn(answer)
    fake = pseudo.apply(answer)
    assert isinstance(fake["deviceNo"], int) and len(str(fake["deviceNo"])) == 10
    assert fake["iccid"][12].isalpha() and fake["iccid"][:6] == "898608"
