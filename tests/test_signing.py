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


def test_verify_is_case_insensitive_and_rejects_a_wrong_secret() -> None:
    assert Signer(secret="s3cret").verify(HEADERS, FORM, MD5.upper())
    assert not Signer(secret="wrong").verify(HEADERS, FORM, MD5)


def test_config_builds_the_signer_and_repr_hides_the_secret() -> None:
    config = PlatformConfig.model_validate({"app_id": "app1", "app_secret": "s3cret",
                                            "sign": {"hash": "sha256", "case": "upper"}})
    signer = config.signer()
    assert signer.sign(HEADERS, FORM) == SHA256.upper()
    assert "s3cret" not in repr(signer)
