"""Verifying the deployment specification envelope (``PKCS7/JSON``) against a pinned certificate.

The server signs every specification: PEM (``-----BEGIN PKCS7-----``) attached SignedData with
the signer certificate embedded, one RSA signer, SHA-256, signed attributes (cryptography's
``PKCS7SignatureBuilder``). The stock agent parses that and ignores the verification result;
this agent enforces it:

1. the PEM label is ``PKCS7`` and the DER is a ContentInfo holding ``signed_data`` whose
   encapsulated content is ``data`` and present (attached);
2. the embedded certificate is byte for byte the one pinned at registration;
3. a signer info names that certificate (issuer and serial number, or subject key identifier),
   uses SHA-256 and RSA PKCS#1 v1.5, and carries signed attributes;
4. the signed attributes' ``content-type`` is ``data`` and their ``message-digest`` is the
   SHA-256 of the content;
5. the RSA signature over the DER of the signed attributes (as a SET OF) verifies with the
   pinned certificate's public key.

Every failure is an ``EnvelopeError`` that says which step failed.

The parsing is asn1crypto's; the RSA check is the few lines of RFC 8017 §8.2.2 (encode the
expected PKCS#1 v1.5 block and compare), so that an agent does not load cryptography's
OpenSSL bindings (several megabytes, kept for the rest of the process's life) for one modular
exponentiation per deployment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from asn1crypto import cms, pem, x509  # type: ignore[import-untyped]

from opendeploy.core.errors import OpenDeployError

__all__ = [
    "SPEC_FORMAT",
    "EnvelopeError",
    "PinnedCertificate",
    "load_certificate",
    "verify_envelope",
    "verify_signed_data",
]

SPEC_FORMAT: Final = "PKCS7/JSON"
_RSA_ALGORITHMS: Final = frozenset({"rsassa_pkcs1v15", "sha256_rsa"})
#: DER of DigestInfo{sha256, NULL} without the digest (RFC 8017 §9.2, note 1).
_SHA256_DIGEST_INFO: Final = bytes.fromhex("3031300d060960864801650304020105000420")


class EnvelopeError(OpenDeployError):
    """A deployment specification envelope that is malformed or not signed by the pinned key."""


@dataclass(frozen=True, slots=True)
class PinnedCertificate:
    """The signer certificate pinned at registration, parsed."""

    der: bytes
    certificate: Any  # asn1crypto.x509.Certificate

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


#: A pinned certificate: parsed, PEM text, or a loaded one with cryptography's ``public_bytes``.
Pinned = PinnedCertificate | str | bytes | Any


def load_certificate(certificate: Pinned) -> PinnedCertificate:
    """A certificate from PEM text (or an already loaded one)."""
    if isinstance(certificate, PinnedCertificate):
        return certificate
    der = _der(certificate)
    try:
        parsed = x509.Certificate.load(der)
        parsed.native  # noqa: B018 - a full parse: a malformed certificate fails here
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise _not_a_certificate(exc) from None
    return PinnedCertificate(der, parsed)


def _der(certificate: Any) -> bytes:
    if hasattr(certificate, "public_bytes"):
        from cryptography.hazmat.primitives.serialization import Encoding

        return bytes(certificate.public_bytes(Encoding.DER))
    data = certificate.encode("ascii", "replace") if isinstance(certificate, str) else certificate
    try:
        label, _, der = pem.unarmor(data)
    except (ValueError, TypeError) as exc:
        raise _not_a_certificate(exc) from None
    if label != "CERTIFICATE":
        raise _not_a_certificate(f"its PEM label is {label!r}")
    return bytes(der)


def _not_a_certificate(why: object) -> EnvelopeError:
    return EnvelopeError(f"the pinned signer certificate is not a PEM certificate: {why}")


def verify_envelope(envelope: Mapping[str, Any] | None, pinned: Pinned) -> dict[str, Any]:
    """The specification JSON of a ``GenericEnvelope`` once its signature checks out."""
    if not isinstance(envelope, Mapping):
        raise EnvelopeError("the deployment specification has no GenericEnvelope")
    form = envelope.get("Format")
    if form != SPEC_FORMAT:
        raise EnvelopeError(
            f"unsupported deployment specification format {form!r}; expected {SPEC_FORMAT}"
        )
    payload = envelope.get("Payload")
    if not isinstance(payload, str) or not payload:
        raise EnvelopeError("the deployment specification envelope has an empty Payload")
    content = verify_signed_data(payload.encode("ascii", "replace"), pinned)
    try:
        document = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnvelopeError(f"the signed content is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise EnvelopeError("the signed content is JSON but not an object")
    return document


def verify_signed_data(pem_bytes: bytes, pinned: Pinned) -> bytes:
    """The content of PEM PKCS#7 SignedData, verified against ``pinned``; else EnvelopeError."""
    certificate = load_certificate(pinned)
    signed_data = _signed_data(pem_bytes)
    content = _content(signed_data)
    _check_embedded_certificate(signed_data, certificate)
    public_key = _rsa_public_key(certificate)
    signer_infos = list(signed_data["signer_infos"])
    if not signer_infos:
        raise EnvelopeError("the envelope has no signer")
    problems = []
    for signer in signer_infos:
        if not _names_certificate(signer, certificate.certificate):
            problems.append("a signer that is not the pinned certificate")
            continue
        _verify_signer(signer, content, public_key)
        return content
    raise EnvelopeError(
        "no signer of the envelope is the pinned certificate (" + "; ".join(problems) + ")"
    )


def _signed_data(pem_bytes: bytes) -> Any:
    if not pem.detect(pem_bytes):
        raise EnvelopeError("the envelope payload is not PEM (no -----BEGIN PKCS7----- line)")
    try:
        label, _, der = pem.unarmor(pem_bytes)
    except ValueError as exc:
        raise EnvelopeError(f"the envelope payload is not valid PEM: {exc}") from None
    if label != "PKCS7":
        raise EnvelopeError(f"the envelope PEM label is {label!r}; expected 'PKCS7'")
    try:
        info = cms.ContentInfo.load(der)
        content_type = info["content_type"].native
        signed_data = info["content"]
        # Force a full parse now so a malformed structure fails here, not halfway through.
        signed_data.native  # noqa: B018
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise EnvelopeError(f"the envelope is not PKCS#7 SignedData: {exc}") from None
    if content_type != "signed_data":
        raise EnvelopeError(f"the envelope holds {content_type!r}, not signed_data")
    return signed_data


def _content(signed_data: Any) -> bytes:
    encapsulated = signed_data["encap_content_info"]
    if encapsulated["content_type"].native != "data":
        raise EnvelopeError(
            f"the signed content type is {encapsulated['content_type'].native!r}, not data"
        )
    content = encapsulated["content"].native
    if not isinstance(content, bytes) or not content:
        raise EnvelopeError("the envelope carries no content (a detached signature?)")
    return content


def _check_embedded_certificate(signed_data: Any, pinned: PinnedCertificate) -> None:
    embedded = [
        choice.chosen.dump()
        for choice in (signed_data["certificates"] or [])
        if choice.name == "certificate"
    ]
    if not embedded:
        raise EnvelopeError("the envelope does not embed its signer certificate")
    if not any(hmac.compare_digest(der, pinned.der) for der in embedded):
        found = ", ".join(hashlib.sha256(der).hexdigest()[:16] for der in embedded)
        raise EnvelopeError(
            "the envelope's signer certificate is not the pinned one (sha256 "
            f"{found} != pinned {pinned.fingerprint[:16]}); re-register the agent if the"
            " server's signer changed"
        )


def _rsa_public_key(pinned: PinnedCertificate) -> tuple[int, int]:
    """(modulus, public exponent) of the pinned certificate's key."""
    key_info = pinned.certificate.public_key
    if key_info.algorithm != "rsa":
        raise EnvelopeError("the pinned signer certificate does not hold an RSA key")
    key = key_info["public_key"].parsed
    return int(key["modulus"].native), int(key["public_exponent"].native)


def _names_certificate(signer: Any, certificate: Any) -> bool:
    sid = signer["sid"]
    if sid.name == "issuer_and_serial_number":
        serial = sid.chosen["serial_number"].native
        issuer = sid.chosen["issuer"].dump()
        return bool(
            serial == certificate.serial_number
            and hmac.compare_digest(issuer, certificate.issuer.dump())
        )
    if sid.name == "subject_key_identifier":
        ski = certificate.key_identifier
        return ski is not None and hmac.compare_digest(sid.chosen.native, ski)
    return False


def _verify_signer(signer: Any, content: bytes, public_key: tuple[int, int]) -> None:
    digest_algorithm = signer["digest_algorithm"]["algorithm"].native
    if digest_algorithm != "sha256":
        raise EnvelopeError(f"the signer uses digest {digest_algorithm!r}; expected sha256")
    signature_algorithm = signer["signature_algorithm"]["algorithm"].native
    if signature_algorithm not in _RSA_ALGORITHMS:
        raise EnvelopeError(
            f"the signer uses {signature_algorithm!r}; expected RSA PKCS#1 v1.5 with SHA-256"
        )
    attributes = signer["signed_attrs"]
    if not attributes or len(attributes) == 0:
        raise EnvelopeError("the signer has no signed attributes")
    values: dict[str, list[Any]] = {}
    for attribute in attributes:
        values.setdefault(attribute["type"].native, []).extend(attribute["values"].native)
    if values.get("content_type") != ["data"]:
        raise EnvelopeError("the signed content-type attribute is missing or not data")
    digests = values.get("message_digest") or []
    if len(digests) != 1:
        raise EnvelopeError("the signed attributes have no single message-digest")
    if not hmac.compare_digest(digests[0], hashlib.sha256(content).digest()):
        raise EnvelopeError(
            "the message-digest attribute does not match the content: the content was altered"
        )
    # The signature covers the DER of the attributes as a SET OF (tag 0x31), not the [0]
    # IMPLICIT tagging they carry inside SignerInfo (RFC 5652 §5.4).
    encoded = attributes.dump()
    signed_bytes = b"\x31" + encoded[1:]
    if not rsa_pkcs1v15_sha256_verify(public_key, signer["signature"].native, signed_bytes):
        raise EnvelopeError("the envelope's signature does not verify with the pinned certificate")


def rsa_pkcs1v15_sha256_verify(
    public_key: tuple[int, int], signature: bytes, message: bytes
) -> bool:
    """RSASSA-PKCS1-v1_5 verification with SHA-256 (RFC 8017 §8.2.2).

    The signature is opened with the public key and compared, whole, with the one block a
    signer could have produced for ``message``: nothing of the opened block is parsed, so
    no malformed padding can be accepted (the flaw behind Bleichenbacher's 2006 forgery).
    """
    modulus, exponent = public_key
    size = (modulus.bit_length() + 7) // 8
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    if len(signature) != size or size < len(digest_info) + 11:
        return False
    value = int.from_bytes(signature, "big")
    if value >= modulus:
        return False
    opened = pow(value, exponent, modulus).to_bytes(size, "big")
    expected = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return hmac.compare_digest(opened, expected)
