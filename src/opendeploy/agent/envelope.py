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
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Final

from asn1crypto import cms, pem  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from opendeploy.core.errors import OpenDeployError

__all__ = [
    "SPEC_FORMAT",
    "EnvelopeError",
    "load_certificate",
    "verify_envelope",
    "verify_signed_data",
]

SPEC_FORMAT: Final = "PKCS7/JSON"
_RSA_ALGORITHMS: Final = frozenset({"rsassa_pkcs1v15", "sha256_rsa"})


class EnvelopeError(OpenDeployError):
    """A deployment specification envelope that is malformed or not signed by the pinned key."""


def load_certificate(certificate: x509.Certificate | str | bytes) -> x509.Certificate:
    """A certificate from PEM text (or an already loaded one)."""
    if isinstance(certificate, x509.Certificate):
        return certificate
    data = certificate.encode("ascii") if isinstance(certificate, str) else certificate
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise EnvelopeError(
            f"the pinned signer certificate is not a PEM certificate: {exc}"
        ) from None


def verify_envelope(
    envelope: Mapping[str, Any] | None, pinned: x509.Certificate | str | bytes
) -> dict[str, Any]:
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


def verify_signed_data(pem_bytes: bytes, pinned: x509.Certificate | str | bytes) -> bytes:
    """The content of PEM PKCS#7 SignedData, verified against ``pinned``; else EnvelopeError."""
    certificate = load_certificate(pinned)
    signed_data = _signed_data(pem_bytes)
    content = _content(signed_data)
    pinned_der = certificate.public_bytes(serialization.Encoding.DER)
    _check_embedded_certificate(signed_data, pinned_der, certificate)
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise EnvelopeError("the pinned signer certificate does not hold an RSA key")
    signer_infos = list(signed_data["signer_infos"])
    if not signer_infos:
        raise EnvelopeError("the envelope has no signer")
    problems = []
    for signer in signer_infos:
        if not _names_certificate(signer, certificate):
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


def _check_embedded_certificate(
    signed_data: Any, pinned_der: bytes, certificate: x509.Certificate
) -> None:
    embedded = [
        choice.chosen.dump()
        for choice in (signed_data["certificates"] or [])
        if choice.name == "certificate"
    ]
    if not embedded:
        raise EnvelopeError("the envelope does not embed its signer certificate")
    if not any(hmac.compare_digest(der, pinned_der) for der in embedded):
        found = ", ".join(hashlib.sha256(der).hexdigest()[:16] for der in embedded)
        pinned = certificate.fingerprint(hashes.SHA256()).hex()[:16]
        raise EnvelopeError(
            "the envelope's signer certificate is not the pinned one (sha256 "
            f"{found} != pinned {pinned}); re-register the agent if the server's signer changed"
        )


def _names_certificate(signer: Any, certificate: x509.Certificate) -> bool:
    sid = signer["sid"]
    if sid.name == "issuer_and_serial_number":
        serial = sid.chosen["serial_number"].native
        issuer = sid.chosen["issuer"].dump()
        return bool(
            serial == certificate.serial_number
            and hmac.compare_digest(issuer, certificate.issuer.public_bytes())
        )
    if sid.name == "subject_key_identifier":
        try:
            ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return False
        return hmac.compare_digest(sid.chosen.native, ski.value.digest)
    return False


def _verify_signer(signer: Any, content: bytes, public_key: rsa.RSAPublicKey) -> None:
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
    try:
        public_key.verify(
            signer["signature"].native, signed_bytes, padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise EnvelopeError(
            "the envelope's signature does not verify with the pinned certificate"
        ) from None
