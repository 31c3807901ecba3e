"""The key that signs deployment specifications (the stock agent's ``PKCS7/JSON`` envelope).

One RSA key and self-signed certificate per installation, created at first start and kept in
the database (the key sealed with the server's SecretBox) so every replica signs alike. The
envelope is attached SignedData with the signer certificate embedded and the PEM label
``PKCS7``, which is what the stock agent parses (stock-agent-wire §10).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from sqlalchemy import Connection

from opendeploy.server.secrets import SecretBox
from opendeploy.store import meta

__all__ = ["SpecSigner"]

_KEY = "spec_signer_key"
_CERT = "spec_signer_certificate"


class SpecSigner:
    def __init__(self, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> None:
        self._key = key
        self.certificate = certificate

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def sign(self, payload: bytes) -> str:
        """PEM (``-----BEGIN PKCS7-----``) SignedData carrying ``payload`` and our cert."""
        envelope = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(payload)
            .add_signer(self.certificate, self._key, hashes.SHA256())
            .sign(serialization.Encoding.PEM, [pkcs7.PKCS7Options.Binary])
        )
        return envelope.decode("ascii")

    @classmethod
    def load_or_create(
        cls, connection: Connection, box: SecretBox, *, now: dt.datetime
    ) -> SpecSigner:
        """The installation's signer; the first server to start creates it."""
        sealed = meta.get(connection, _KEY)
        if sealed is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii")
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opendeploy-spec-signer")])
            certificate = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256())
            )
            meta.get_or_create(
                connection,
                _CERT,
                certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            )
            sealed = meta.get_or_create(connection, _KEY, box.seal(pem))
        certificate_pem = meta.get(connection, _CERT)
        assert certificate_pem is not None
        loaded = serialization.load_pem_private_key(box.open(sealed).encode("ascii"), None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise TypeError("the stored spec signer key is not an RSA key")
        return cls(loaded, x509.load_pem_x509_certificate(certificate_pem.encode("ascii")))
