"""A C2PA test CA and signing certificate, made at test time (nothing secret is checked in)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SignerPems:
    """PEMs: the CA (a trust anchor for readers), the chain (leaf then CA) and the leaf key."""

    ca: bytes
    chain: bytes
    key: bytes

    def write(self, folder: Path, team: str) -> Path:
        """A signers file for ``team`` as an operator writes it, with relative PEM paths."""
        (folder / f"{team}.chain.pem").write_bytes(self.chain)
        (folder / f"{team}.key.pem").write_bytes(self.key)
        config = folder / "c2pa.toml"
        config.write_text(
            f'[teams."{team}"]\ncert_chain = "{team}.chain.pem"\nprivate_key = "{team}.key.pem"\n'
        )
        return config


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imgfarm tests"),
        ]
    )


def _usage(*, sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not sign,
        crl_sign=not sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_test_signer() -> SignerPems:
    """EC P-256 CA and leaf with the extensions C2PA's validator asks of a signing
    certificate (digitalSignature, an EKU it accepts, SKI/AKI), valid for a day around now."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())

    def builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey):
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    ca = (
        builder("imgfarm test CA", _name("imgfarm test CA"), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(sign=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        builder("imgfarm test signer", ca.subject, leaf_key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return SignerPems(
        ca=ca.public_bytes(pem),
        chain=leaf.public_bytes(pem) + ca.public_bytes(pem),
        key=leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
