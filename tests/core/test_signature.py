"""Tests for kargo_bitbucket.core.signature: published vectors, strict parsing, newline secret."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kargo_bitbucket.core.signature import SignatureCheck, check_signature, sign
from tests.support import corpus_dir

CORPUS = corpus_dir()
CORPUS_ABSENT = f"Bitbucket payload corpus absent at {CORPUS} (set KARGO_BITBUCKET_PAYLOADS)"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=CORPUS_ABSENT)

# The "HMAC test vectors" table of SOURCES.md (published with the JBBS tests).
PUBLISHED_SECRET = b"Gkvl$k$wyNpQAF42"
VECTORS = {
    "cloud_repo_push_branch_create_signed.json": (
        14515,
        "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035",
        "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a036",
    ),
    "server_repo_refs_changed_delete_signed.json": (
        1168,
        "sha256=4ffba9e7b58ea3d7e1a230446e8c92baea0aeec89b73f598932387254f0de13e",
        "sha256=4ffba9e7b58ea3d7e1a230446e8c92baea0aeec89b73f598932387254f0de13f",
    ),
}

BODY = b'{"push": {"changes": []}}'
SECRET = b"s3cret"


def header(alg: str, body: bytes = BODY, secret: bytes = SECRET) -> str:
    return f"{alg}=" + hmac.new(secret, body, getattr(hashlib, alg)).hexdigest()


# --------------------------------------------------------------------------- published vectors


@needs_corpus
def test_vectors_are_the_ones_in_sources_md() -> None:
    sources = (CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    assert "`Gkvl$k$wyNpQAF42`" in sources
    for name, (_, good, _) in VECTORS.items():
        assert f"`{name}`" in sources
        assert f"X-Hub-Signature: {good}" in sources


@needs_corpus
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_published_signed_delivery_verifies(name: str) -> None:
    size, good, last_digit_changed = VECTORS[name]
    body = (CORPUS / name).read_bytes()
    assert len(body) == size, "the signed payload must be byte-exact"
    assert check_signature(good, body, PUBLISHED_SECRET) is SignatureCheck.VALID
    assert sign(body, PUBLISHED_SECRET) == good
    assert check_signature(last_digit_changed, body, PUBLISHED_SECRET) is SignatureCheck.INVALID
    # One changed byte in the body, or a different secret, breaks it too.
    assert check_signature(good, body + b"\n", PUBLISHED_SECRET) is SignatureCheck.INVALID
    assert check_signature(good, body, PUBLISHED_SECRET[:-1]) is SignatureCheck.INVALID
    # The `echo` mistake: the stored secret has a trailing newline.
    assert (
        check_signature(good, body, PUBLISHED_SECRET + b"\n")
        is SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE
    )


# --------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("alg", ["sha256", "sha1", "sha512"])
def test_supported_algorithms(alg: str) -> None:
    good = header(alg)
    assert check_signature(good, BODY, SECRET) is SignatureCheck.VALID
    assert check_signature(good.upper(), BODY, SECRET) is SignatureCheck.VALID  # SHA256=ABC…
    assert check_signature(good, BODY + b" ", SECRET) is SignatureCheck.INVALID
    assert check_signature(good, BODY, b"other") is SignatureCheck.INVALID


def test_hex_of_either_case_and_surrounding_whitespace() -> None:
    alg, _, hex_digest = header("sha256").partition("=")
    assert check_signature(f"{alg}={hex_digest.upper()}", BODY, SECRET) is SignatureCheck.VALID
    assert check_signature(f" {alg}={hex_digest}\t", BODY, SECRET) is SignatureCheck.VALID


def test_sign_is_what_bitbucket_sends() -> None:
    value = sign(BODY, SECRET)
    assert value == header("sha256")
    assert value.startswith("sha256=") and len(value) == len("sha256=") + 64
    assert value == value.lower()


def test_empty_body_and_empty_secret() -> None:
    assert check_signature(sign(b"", b""), b"", b"") is SignatureCheck.VALID
    assert check_signature(sign(b"", SECRET), b"", SECRET) is SignatureCheck.VALID


# --------------------------------------------------------------------------- malformed / missing

GOOD_HEX = header("sha256").partition("=")[2]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("g" * 64, id="non-hex"),
        pytest.param(GOOD_HEX[:-1], id="odd-length"),
        pytest.param(GOOD_HEX + "0", id="odd-length-long"),
        pytest.param(GOOD_HEX[:-2], id="short"),
        pytest.param(GOOD_HEX + "00", id="long"),
        pytest.param(header("sha1").partition("=")[2], id="sha1-length-for-sha256"),
        pytest.param(GOOD_HEX[:30] + " " + GOOD_HEX[31:], id="space-inside"),
        pytest.param(GOOD_HEX[:32] + "\n" + GOOD_HEX[32:-1], id="newline-inside"),
        pytest.param("0x" + GOOD_HEX[2:], id="0x-prefix"),
        pytest.param("=" + GOOD_HEX[1:], id="double-equals"),
        pytest.param("\u0661" * 64, id="non-ascii-digits"),
        pytest.param("\uff10" * 64, id="fullwidth-digits"),
        pytest.param("", id="empty-hex"),
    ],
)
def test_malformed_hex(value: str) -> None:
    assert check_signature(f"sha256={value}", BODY, SECRET) is SignatureCheck.MALFORMED


@pytest.mark.parametrize(
    "value",
    [
        "md5=" + "0" * 32,
        "sha384=" + "0" * 96,
        "sha-256=" + GOOD_HEX,
        "SHA_256=" + GOOD_HEX,
        "sha256 =" + GOOD_HEX,
        "=" + GOOD_HEX,
        GOOD_HEX,
        "sha256",
        "sha256:" + GOOD_HEX,
        "Bearer " + GOOD_HEX,
        "sha256=" + GOOD_HEX + ",sha1=" + "0" * 40,
        "\u0130sha256=" + GOOD_HEX,
    ],
)
def test_malformed_prefix(value: str) -> None:
    assert check_signature(value, BODY, SECRET) is SignatureCheck.MALFORMED


def test_sha1_and_sha512_have_their_own_lengths() -> None:
    assert check_signature("sha1=" + GOOD_HEX, BODY, SECRET) is SignatureCheck.MALFORMED
    assert check_signature("sha512=" + GOOD_HEX, BODY, SECRET) is SignatureCheck.MALFORMED
    assert check_signature("sha1=" + "0" * 40, BODY, SECRET) is SignatureCheck.INVALID
    assert check_signature("sha512=" + "0" * 128, BODY, SECRET) is SignatureCheck.INVALID


@pytest.mark.parametrize("value", [None, "", " ", "\t "])
def test_missing(value: str | None) -> None:
    assert check_signature(value, BODY, SECRET) is SignatureCheck.MISSING


# --------------------------------------------------------------------------- trailing newline


@pytest.mark.parametrize(
    ("stored", "signed_with", "expected"),
    [
        (b"s3cret\n", b"s3cret", SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE),
        (b"s3cret\n", b"s3cret\n", SignatureCheck.VALID),
        (b"s3cret\n\n", b"s3cret", SignatureCheck.INVALID),
        (b"s3cret\n\n", b"s3cret\n", SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE),
        (b"s3cret\r\n", b"s3cret", SignatureCheck.INVALID),
        (b"s3cret ", b"s3cret", SignatureCheck.INVALID),
        (b"s3cret", b"s3cret\n", SignatureCheck.INVALID),
        (b"\n", b"", SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE),
    ],
)
def test_trailing_newline_in_secret(stored: bytes, signed_with: bytes, expected: Any) -> None:
    for alg in ("sha256", "sha1", "sha512"):
        assert check_signature(header(alg, secret=signed_with), BODY, stored) is expected


def test_digests_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert check_signature(header("sha256"), BODY, SECRET) is SignatureCheck.VALID
    assert check_signature("sha256=" + "0" * 64, BODY, SECRET) is SignatureCheck.INVALID
    assert len(calls) == 2


# --------------------------------------------------------------------------- properties


@given(body=st.binary(max_size=256), secret=st.binary(max_size=64))
def test_sign_then_check_roundtrip(body: bytes, secret: bytes) -> None:
    assert check_signature(sign(body, secret), body, secret) is SignatureCheck.VALID


@given(body=st.binary(min_size=1, max_size=256), secret=st.binary(max_size=64), data=st.data())
def test_any_body_change_is_invalid(body: bytes, secret: bytes, data: Any) -> None:
    index = data.draw(st.integers(0, len(body) - 1))
    changed = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    result = check_signature(sign(body, secret), changed, secret)
    assert result is SignatureCheck.INVALID


@given(value=st.one_of(st.none(), st.text(max_size=200)), body=st.binary(max_size=32))
def test_any_header_gives_a_result(value: str | None, body: bytes) -> None:
    assert isinstance(check_signature(value, body, SECRET), SignatureCheck)
