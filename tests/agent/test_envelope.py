"""The PKCS7/JSON specification envelope: verified against the pinned signer certificate."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from asn1crypto import pem  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from opendeploy.agent.envelope import (
    EnvelopeError,
    load_certificate,
    rsa_pkcs1v15_sha256_verify,
    verify_envelope,
    verify_signed_data,
)

SPEC = {"DeploymentId": "d-AAAAAAAAA", "DeploymentGroupId": "g-1", "ApplicationName": "app"}


def _signer(
    common_name: str = "opendeploy-spec-signer",
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


KEY, CERT = _signer()
CERT_PEM = CERT.public_bytes(serialization.Encoding.PEM).decode()


def _sign(
    payload: bytes,
    *,
    key: rsa.RSAPrivateKey = KEY,
    certificate: x509.Certificate = CERT,
    options: tuple[pkcs7.PKCS7Options, ...] = (pkcs7.PKCS7Options.Binary,),
    digest: hashes.HashAlgorithm | None = None,
) -> str:
    """What the server's SpecSigner produces (attached, cert embedded, PEM label PKCS7)."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(payload)
        .add_signer(certificate, key, digest or hashes.SHA256())
        .sign(serialization.Encoding.PEM, list(options))
        .decode()
    )


def _envelope(payload: str, form: str = "PKCS7/JSON") -> dict[str, str]:
    return {"Format": form, "Payload": payload}


def _der(payload: str) -> bytes:
    _, _, der = pem.unarmor(payload.encode())
    return bytes(der)


def _armor(der: bytes, label: str = "PKCS7") -> str:
    return bytes(pem.armor(label, der)).decode()


def test_a_valid_envelope_gives_the_spec_json() -> None:
    signed = _sign(json.dumps(SPEC).encode())
    assert verify_envelope(_envelope(signed), CERT_PEM) == SPEC
    assert verify_envelope(_envelope(signed), CERT) == SPEC


def test_an_envelope_from_another_signer_is_refused() -> None:
    other_key, other_cert = _signer()
    signed = _sign(json.dumps(SPEC).encode(), key=other_key, certificate=other_cert)
    with pytest.raises(EnvelopeError, match="not the pinned one"):
        verify_envelope(_envelope(signed), CERT_PEM)


def test_a_same_named_certificate_with_another_key_is_refused() -> None:
    impostor_key, impostor_cert = _signer("opendeploy-spec-signer")
    signed = _sign(json.dumps(SPEC).encode(), key=impostor_key, certificate=impostor_cert)
    with pytest.raises(EnvelopeError, match="pinned"):
        verify_envelope(_envelope(signed), CERT_PEM)


def test_content_altered_after_signing_is_refused() -> None:
    der = _der(_sign(json.dumps(SPEC).encode()))
    assert b"d-AAAAAAAAA" in der
    tampered = der.replace(b"d-AAAAAAAAA", b"d-BBBBBBBBB")
    with pytest.raises(EnvelopeError, match="message-digest"):
        verify_envelope(_envelope(_armor(tampered)), CERT_PEM)


def test_a_corrupted_signature_is_refused() -> None:
    der = bytearray(_der(_sign(json.dumps(SPEC).encode())))
    der[-1] ^= 0x01  # the signature is the last field of the only SignerInfo
    with pytest.raises(EnvelopeError, match="signature does not verify"):
        verify_envelope(_envelope(_armor(bytes(der))), CERT_PEM)


def test_the_embedded_certificate_must_be_present() -> None:
    signed = _sign(
        json.dumps(SPEC).encode(),
        options=(pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCerts),
    )
    with pytest.raises(EnvelopeError, match="does not embed"):
        verify_envelope(_envelope(signed), CERT_PEM)


def test_a_detached_signature_is_refused() -> None:
    signed = _sign(
        json.dumps(SPEC).encode(),
        options=(pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.DetachedSignature),
    )
    with pytest.raises(EnvelopeError, match="no content"):
        verify_envelope(_envelope(signed), CERT_PEM)


def test_signed_attributes_are_required() -> None:
    signed = _sign(
        json.dumps(SPEC).encode(),
        options=(pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoAttributes),
    )
    with pytest.raises(EnvelopeError, match="no signed attributes"):
        verify_envelope(_envelope(signed), CERT_PEM)


def test_a_digest_other_than_sha256_is_refused() -> None:
    signed = _sign(json.dumps(SPEC).encode(), digest=hashes.SHA512())
    with pytest.raises(EnvelopeError, match="sha256"):
        verify_envelope(_envelope(signed), CERT_PEM)


@pytest.mark.parametrize(
    ("envelope", "match"),
    [
        (None, "no GenericEnvelope"),
        ({"Format": "TEXT/JSON", "Payload": json.dumps(SPEC)}, "unsupported"),
        ({"Format": "PKCS7/JSON", "Payload": ""}, "empty Payload"),
        ({"Format": "PKCS7/JSON", "Payload": "not pem at all"}, "not PEM"),
    ],
)
def test_malformed_envelopes_are_refused(envelope: dict[str, str] | None, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match):
        verify_envelope(envelope, CERT_PEM)


def test_the_pem_label_must_be_pkcs7() -> None:
    der = _der(_sign(json.dumps(SPEC).encode()))
    with pytest.raises(EnvelopeError, match="label"):
        verify_envelope(_envelope(_armor(der, "CMS")), CERT_PEM)


def test_garbage_der_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="not PKCS#7"):
        verify_envelope(_envelope(_armor(b"\x30\x03\x02\x01\x05")), CERT_PEM)


def test_signed_content_must_be_a_json_object() -> None:
    with pytest.raises(EnvelopeError, match="not JSON"):
        verify_envelope(_envelope(_sign(b"\xff\xfe not json")), CERT_PEM)
    with pytest.raises(EnvelopeError, match="not an object"):
        verify_envelope(_envelope(_sign(b"[1, 2]")), CERT_PEM)


def test_verify_signed_data_returns_the_exact_bytes() -> None:
    payload = b'{"a": "\xc3\xa9t\xc3\xa9"}'
    assert verify_signed_data(_sign(payload).encode(), CERT_PEM) == payload


def test_a_pinned_certificate_without_an_rsa_key_is_refused() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = dt.datetime.now(dt.UTC)
    ec_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(b"{}")
        .add_signer(ec_cert, ec_key, hashes.SHA256())
        .sign(serialization.Encoding.PEM, [pkcs7.PKCS7Options.Binary])
        .decode()
    )
    with pytest.raises(EnvelopeError, match="RSA"):
        verify_envelope(_envelope(signed), ec_cert)


def test_a_bad_pinned_certificate_is_reported() -> None:
    with pytest.raises(EnvelopeError, match="pinned signer certificate"):
        verify_envelope(_envelope(_sign(b"{}")), "not a certificate")


def test_the_servers_own_signer_is_accepted() -> None:
    from opendeploy.server.signing import SpecSigner

    signer = SpecSigner(KEY, CERT)
    envelope = _envelope(signer.sign(json.dumps(SPEC, separators=(",", ":")).encode()))
    assert verify_envelope(envelope, signer.certificate_pem) == SPEC


# -- the RSA check, against cryptography's ---------------------------------------------------


def _public(key: rsa.RSAPrivateKey) -> tuple[int, int]:
    numbers = key.public_key().public_numbers()
    return numbers.n, numbers.e


@pytest.mark.parametrize("bits", [2048, 3072])
def test_the_rsa_check_accepts_what_cryptography_signs(bits: int) -> None:
    from cryptography.hazmat.primitives.asymmetric import padding

    key = KEY if bits == 2048 else rsa.generate_private_key(public_exponent=65537, key_size=bits)
    for message in (b"", b"{}", json.dumps(SPEC).encode() * 50):
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        assert rsa_pkcs1v15_sha256_verify(_public(key), signature, message)


def test_the_rsa_check_refuses_everything_else() -> None:
    from cryptography.hazmat.primitives.asymmetric import padding

    public = _public(KEY)
    message = b"signed"
    good = KEY.sign(message, padding.PKCS1v15(), hashes.SHA256())
    modulus = public[0]
    forged = [
        good[:-1] + bytes([good[-1] ^ 1]),  # altered
        good[1:],  # short
        b"\x00" + good,  # long
        modulus.to_bytes(len(good), "big"),  # not below the modulus
        KEY.sign(message, padding.PKCS1v15(), hashes.SHA512()),  # another digest
        KEY.sign(
            message,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        ),  # another padding
        _signer()[0].sign(message, padding.PKCS1v15(), hashes.SHA256()),  # another key
    ]
    for signature in forged:
        assert not rsa_pkcs1v15_sha256_verify(public, signature, message)
    assert not rsa_pkcs1v15_sha256_verify(public, good, message + b" ")


def test_the_pinned_certificate_is_parsed_without_cryptography() -> None:
    pinned = load_certificate(CERT_PEM)
    assert pinned.der == CERT.public_bytes(serialization.Encoding.DER)
    assert pinned.fingerprint == CERT.fingerprint(hashes.SHA256()).hex()
    assert load_certificate(pinned) is pinned
    assert load_certificate(CERT).der == pinned.der
    for bad in ("not a certificate", CERT_PEM.replace("CERTIFICATE", "PUBLIC KEY")):
        with pytest.raises(EnvelopeError, match="pinned signer certificate"):
            load_certificate(bad)
