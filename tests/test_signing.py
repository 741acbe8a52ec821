"""Signing: known vectors for every hash, computed outside Python.

The canonical string of the fixed request below, with the default template, is

    appID=app1&body=b=2&deviceNo=9176069816&timestamp=1758192050&traceID=0123456789abcdef0123456789abcdef&secret=s3cret

and the expected digests were computed with coreutils / OpenSSL, not with the code under test:

    S='appID=app1&body=b=2&deviceNo=9176069816&timestamp=1758192050&traceID=0123456789abcdef0123456789abcdef&secret=s3cret'
    printf '%s' "$S" | md5sum                              -> 0d9005854693c566e44f3af466bc7379
    printf '%s' "$S" | sha256sum                           -> 908348b6...c6ee8000
    printf '%s' "$S" | openssl dgst -sha256 -hmac s3cret   -> f4e88ff7...23aa215b0
    printf '%s' '2.0|0123456789abcdef0123456789abcdef' | md5sum -> 71173e7ae2a2790d24f93e1ef0a9ba11
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from collector.config import PlatformConfig
from collector.platform.signing import Signer, canonical_body

HEADERS = {"appID": "app1", "apiVersion": "2.0", "traceID": "0123456789abcdef0123456789abcdef",
           "timestamp": "1758192050"}
# Deliberately out of order: the body is sorted by key before signing.
FORM = {"deviceNo": "9176069816", "b": "2"}

MD5 = "0d9005854693c566e44f3af466bc7379"
SHA256 = "908348b665c98d76c0ebc9bca7f5cd24f67d6dd4bc95ca2f5b219fd5c6ee8000"
HMAC_SHA256 = "f4e88ff79ee105129a39635ab73fcc2f8753ca7f17b7ee0d8a189fe23aa215b0"


def test_canonical_body_sorts_keys_and_does_not_url_encode() -> None:
    assert canonical_body(FORM) == "b=2&deviceNo=9176069816"
    assert canonical_body({"iccids": "a,b"}) == "iccids=a,b"


@pytest.mark.parametrize(("hash_name", "expected"), [("md5", MD5), ("sha256", SHA256),
                                                      ("hmac-sha256", HMAC_SHA256)])
def test_known_vectors(hash_name: str, expected: str) -> None:
    signer = Signer(secret="s3cret", hash=hash_name)  # type: ignore[arg-type]
    assert signer.sign(HEADERS, FORM) == expected
    assert Signer(secret="s3cret", hash=hash_name, uppercase=True).sign(HEADERS, FORM) == expected.upper()  # type: ignore[arg-type]


def test_custom_template_vector() -> None:
    signer = Signer(secret="unused", template="{apiVersion}|{traceID}")
    assert signer.sign(HEADERS, FORM) == "71173e7ae2a2790d24f93e1ef0a9ba11"


def test_config_builds_the_signer_and_repr_hides_the_secret() -> None:
    config = PlatformConfig.model_validate({"app_id": "app1", "app_secret": "s3cret",
                                            "sign": {"hash": "sha256", "case": "upper"}})
    assert config.app_secret is not None
    signer = Signer.from_config(config.sign, config.app_secret.get_secret_value())
    assert signer.sign(HEADERS, FORM) == SHA256.upper()
    assert "s3cret" not in repr(signer)


def test_empty_form_values_are_left_out_of_the_body() -> None:
    assert canonical_body({"deviceNo": "9176069816", "b": "2", "month": ""}) == "b=2&deviceNo=9176069816"


def test_more_hashes_known_vectors() -> None:
    # printf '%s' "$S" | sha1sum ; printf '%s' "$S" | openssl dgst -md5 -hmac s3cret
    assert Signer(secret="s3cret", hash="sha1").sign(HEADERS, FORM) == "950d2ea1038aaffad771eef08bb30b059bf32032"
    assert Signer(secret="s3cret", hash="hmac-md5").sign(HEADERS, FORM) == "9c7cb686cd9bfcc7581f6a6897fa9736"


def test_timestamp_in_milliseconds_is_the_header_and_the_template_value() -> None:
    # printf '%s' 'app11758192050000s3cret' | md5sum
    signer = Signer(secret="s3cret", template="{appID}{timestamp}{secret}", timestamp_unit="milliseconds")
    stamp = signer.timestamp(1758192050.0)
    assert stamp == "1758192050000"
    assert Signer(secret="x").timestamp(1758192050.9) == "1758192050"
    assert signer.sign({**HEADERS, "timestamp": stamp}, FORM) == "62cc4bb8c531a31cc41b5c39c0c7916c"


def test_sorted_body_with_the_secret_appended_as_key() -> None:
    # printf '%s' 'b=2&deviceNo=9176069816&key=s3cret' | md5sum
    signer = Signer(secret="s3cret", template="{body}&key={secret}")
    assert signer.sign(HEADERS, FORM) == "bdf245866b47750d75658a96d77fa114"


@pytest.mark.parametrize("sign", [{"hash": "sha512"}, {"timestamp": "minutes"}, {"template": "{appId}"},
                                  {"template": "{body"}])
def test_a_sign_recipe_outside_the_schema_is_refused(sign: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        PlatformConfig.model_validate({"sign": sign})
