"""Verify and produce Bitbucket's `X-Hub-Signature` HMAC header (SPEC §5)."""

from __future__ import annotations

import enum
import hmac
import re

__all__ = ["SignatureCheck", "check_signature", "sign"]

# Algorithm name -> digest length in bytes. Bitbucket sends sha256; sha1 and sha512
# are accepted because the SPEC allows them.
_DIGEST_SIZES: dict[str, int] = {"sha256": 32, "sha1": 20, "sha512": 64}

# Explicit ASCII ranges: bytes.fromhex alone would tolerate embedded whitespace.
_HEX = re.compile(r"[0-9a-fA-F]+")

# HTTP optional whitespace; only used to decide whether a header is effectively empty.
_OWS = " \t"


class SignatureCheck(enum.Enum):
    """Outcome of checking a delivery's signature; the HTTP layer maps it to 401 or onwards."""

    MISSING = "missing"
    MALFORMED = "malformed"
    INVALID = "invalid"
    VALID = "valid"
    VALID_WITHOUT_TRAILING_NEWLINE = "valid_without_trailing_newline"


def check_signature(header: str | None, body: bytes, secret: bytes) -> SignatureCheck:
    """Check an `X-Hub-Signature` value against the raw body and the receiver's secret.

    The header is `<alg>=<hex>`: `alg` is sha256, sha1 or sha512 (matched
    case-insensitively, as it is a token, not secret material); the hex must be
    exactly the digest length for that algorithm, ASCII hex digits only (either
    case). Anything else is MALFORMED. A missing, empty or whitespace-only header
    is MISSING. The digest is compared in constant time. If it fails with the
    secret as stored but passes with exactly one trailing b"\\n" removed (the
    `echo` without `-n` mistake), the answer is VALID_WITHOUT_TRAILING_NEWLINE so
    the caller can accept the delivery and warn.
    """
    if header is None or not header.strip(_OWS):
        return SignatureCheck.MISSING
    alg, sep, hex_digest = header.strip(_OWS).partition("=")
    alg = alg.lower() if alg.isascii() else ""
    size = _DIGEST_SIZES.get(alg) if sep else None
    if size is None:
        return SignatureCheck.MALFORMED
    if len(hex_digest) != 2 * size or _HEX.fullmatch(hex_digest) is None:
        return SignatureCheck.MALFORMED
    expected = bytes.fromhex(hex_digest)
    if hmac.compare_digest(hmac.digest(secret, body, alg), expected):
        return SignatureCheck.VALID
    if secret.endswith(b"\n") and hmac.compare_digest(
        hmac.digest(secret[:-1], body, alg), expected
    ):
        return SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE
    return SignatureCheck.INVALID


def sign(body: bytes, secret: bytes) -> str:
    """Return the `X-Hub-Signature` value Bitbucket would send for this body: `sha256=<hex>`."""
    return "sha256=" + hmac.digest(secret, body, "sha256").hex()
