"""The pieces behind the API's access rules, URL redaction and start-up checks, one module at a time:
how a URL is shown, how a Host header is read, how the API token is kept and found, and the
configuration keys that go with them. The end-to-end proofs are in test_api_access.py,
test_url_redaction.py and test_startup_errors.py."""

from __future__ import annotations

import io
import logging
import stat
from pathlib import Path

import pytest
import structlog

from collector import apitoken
from collector.alerts.silences import SilenceError, check_length
from collector.apitoken import TokenUnavailable, client_token, provision_token
from collector.config import ConfigError, HttpConfig, load_client_settings, parse_config
from collector.inventory import duplicates
from collector.logs import configure_logging, redact_text, redact_url, redact_urls, url_secrets
from collector.telemetry import allowed_hosts, split_host


@pytest.mark.parametrize(("url", "shown"), [
    ("http://admin:PASS@db:8086/write", "http://admin:<redacted>@db:8086/write"),
    ("https://T0KEN@hooks.example.com/x", "https://<redacted>@hooks.example.com/x"),  # a lone user is a token
    ("http://u:p@ss@host/a@b", "http://u:<redacted>@host/a@b"),  # the last @ before the path ends it
    ("http://:pw@h", "http://:<redacted>@h"),
    ("http://host/path?to=a@b", "http://host/path?to=a@b"),
    ("http://127.0.0.1:9108", "http://127.0.0.1:9108"),
    ("error: POST 'http://a:b@h/x' failed; retry http://c:d@i", "error: POST 'http://a:<redacted>@h/x' failed; "
                                                                "retry http://c:<redacted>@i"),
])
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown
    assert redact_text(url) == shown


def test_url_passwords_are_found_in_a_configuration_as_written_and_decoded() -> None:
    found = url_secrets({"sinks": [{"url": "http://admin:P%40ss@db"}, {"url": "https://t0k@h"}],
                         "x": "http://plain.example", "n": 3})
    assert found == {"P%40ss", "P@ss", "t0k"}
    assert redact_urls({"a": ["http://u:p@h"], "b": 1}) == {"a": ["http://u:<redacted>@h"], "b": 1}


def test_library_log_lines_lose_url_passwords() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("some.library").warning("cannot reach %s", "http://admin:Libr4ryPass@db:8086")
    assert "admin:<redacted>@db:8086" in out.getvalue() and "Libr4ryPass" not in out.getvalue()


def test_structlog_events_lose_url_passwords() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    structlog.get_logger("t").error("sink failed", error="POST http://admin:Ev3ntPass@db/write: 401")
    assert "Ev3ntPass" not in out.getvalue() and "admin:<redacted>@db" in out.getvalue()


@pytest.mark.parametrize(("header", "parsed"), [
    ("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:9108", ("::1", 9108)), ("LocalHost.", ("localhost", None)),
    ("example.com:x", ("example.com", -1)), ("", ("", None)),
])
def test_a_host_header_is_read_as_host_and_port(header: str, parsed: tuple[str, int | None]) -> None:
    assert split_host(header) == parsed


def test_allowed_hosts_are_loopback_the_listen_address_and_the_configured_names() -> None:
    assert allowed_hosts(HttpConfig()) == {"localhost", "127.0.0.1", "::1"}
    config = HttpConfig(listen="0.0.0.0", allowed_hosts=["Collector.Example.NET.", "[fd00::5]", "10.0.0.5"])
    assert allowed_hosts(config) == {"localhost", "127.0.0.1", "::1", "collector.example.net", "fd00::5", "10.0.0.5"}
    assert "192.168.1.9" in allowed_hosts(HttpConfig(listen="192.168.1.9"))


@pytest.mark.parametrize("bad", ["http://collector", "collector:9108", "*", "*.example.com", "a/b", ""])
def test_an_allowed_host_is_a_plain_name_or_address(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"simulator": {"embedded": True}, "http": {"allowed_hosts": [bad]}}, env={})
    assert info.value.problems[0].startswith("http.allowed_hosts: ")


def test_a_configured_api_token_must_be_long_and_is_never_shown() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"simulator": {"embedded": True}, "http": {"api_token": "short"}}, env={})
    assert info.value.problems[0].startswith("http.api_token: must be at least 16 characters")
    assert "short" not in str(info.value)


def test_a_silence_longer_than_the_maximum_is_refused() -> None:
    check_length(0, 30 * 86400, 30 * 86400)
    with pytest.raises(SilenceError, match=r"at most 1h \(alerts.max_silence_duration\); this one would last 2h"):
        check_length(100, 100 + 7200, 3600)
    assert parse_config({"simulator": {"embedded": True}}, env={}).alerts.max_silence_duration == 30 * 86400


def test_duplicates_are_named_with_where_they_were_written() -> None:
    assert duplicates("f.csv", "device", [("1", "line 2"), ("2", "line 3")]) is None
    many = [(str(i), f"line {n}") for i in range(12) for n in (1, 2)]
    text = duplicates("f.csv", "device", many)
    assert text is not None and text.startswith("f.csv: device ids listed more than once")
    assert text.endswith("9 (line 1, line 2) and 2 more")


# --- the API token ------------------------------------------------------------------------------------


def test_the_token_is_made_once_kept_across_starts_and_private(tmp_path: Path) -> None:
    token = provision_token(HttpConfig(), tmp_path)
    assert token and len(token) == 43
    path = tmp_path / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert provision_token(HttpConfig(), tmp_path) == token
    path.chmod(0o644)
    assert provision_token(HttpConfig(), tmp_path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_damaged_token_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "api-token").write_text("\n")
    token = provision_token(HttpConfig(), tmp_path)
    assert token and (tmp_path / "api-token").read_text().strip() == token


def test_a_configured_token_wins_and_nothing_is_stored(tmp_path: Path) -> None:
    config = HttpConfig(api_token="c" * 32)  # type: ignore[arg-type]
    assert provision_token(config, tmp_path) == "c" * 32
    assert not (tmp_path / "api-token").exists()


def test_no_token_when_it_cannot_be_stored(tmp_path: Path) -> None:
    assert provision_token(HttpConfig(), tmp_path / "missing" / "dir") is None


def write_config(tmp_path: Path, http: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text("platform:\n  app_id: x\n  app_secret_credential: not-here\n"
                    f"http:\n{http}\nstate_dir: state\n")
    return path


def test_the_client_reads_the_state_directory_token_without_the_rest_of_the_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = write_config(tmp_path, "  port: 9109")
    settings = load_client_settings(path)  # the app secret's credential cannot be read here: not needed
    assert settings.state_dir == str(tmp_path / "state") and settings.http.port == 9109
    with pytest.raises(TokenUnavailable, match=r"no API token at .*api-token: the collector makes it"):
        client_token(settings)
    (tmp_path / "state").mkdir()
    token = provision_token(settings.http, tmp_path / "state")
    assert client_token(settings) == (token, str(tmp_path / "state" / "api-token"))


def test_the_client_finds_a_credential_in_systemds_credential_store(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    store = tmp_path / "credstore"
    store.mkdir()
    monkeypatch.setattr(apitoken, "CREDSTORE_DIRS", (str(tmp_path / "none"), str(store)))
    settings = load_client_settings(write_config(tmp_path, "  api_token_credential: iot-collector.api_token"))
    with pytest.raises(TokenUnavailable, match=r"names iot-collector\.api_token, which is not in"):
        client_token(settings)
    (store / "iot-collector.api_token").write_text("k" * 40 + "\n")
    assert client_token(settings) == ("k" * 40, str(store / "iot-collector.api_token"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "none"))
    with pytest.raises(TokenUnavailable):
        client_token(settings)


def test_the_client_uses_a_token_file_given_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("f" * 20)
    settings = load_client_settings(write_config(tmp_path, "  api_token: " + "i" * 20))
    assert client_token(settings) == ("i" * 20, f"http.api_token in {tmp_path / 'collector.yaml'}")
    assert client_token(settings, str(path)) == ("f" * 20, str(path))
    with pytest.raises(TokenUnavailable, match="cannot read the API token"):
        client_token(settings, str(tmp_path / "absent"))
