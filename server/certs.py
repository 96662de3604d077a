"""Development credentials for a bitfed deployment: a self-signed CA, a server cert, node keys.

Flower 1.42 serves its single SuperLink port over TLS when given ``--ssl-ca-certfile``,
``--ssl-certfile`` and ``--ssl-keyfile``; SuperNodes verify it with ``--root-certificates`` (the
CA), so the server certificate must carry a subjectAltName for every host name or IP address the
nodes dial (``superlink`` in compose, ``127.0.0.1`` on loopback, the LAN address of a real host).
With ``--enable-supernode-auth`` each SuperNode signs its requests with an EC private key in
OpenSSH format (``--auth-supernode-private-key``) whose public half was registered with
``flwr supernode register`` (flwr's own keys are NIST P-384, ``ecdsa-sha2-nistp384``).

Files written into ``out_dir`` (every one atomically: temp file, fsync, rename; secrets 0600)::

    ca.crt              self-signed CA certificate   -> --ssl-ca-certfile / --root-certificates
    ca.key              CA private key (secret; only needed to issue more server certificates)
    server.pem          server certificate, SANs = hosts -> --ssl-certfile
    server.key          server private key (secret)  -> --ssl-keyfile
    <name>, <name>.pub  SuperNode key pair (private key is secret) -> --auth-supernode-private-key

These are for development and tests. In production use a CA you control. Nothing here logs or
prints a secret: the command line prints paths only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.atomic import atomic_write

__all__ = [
    "ServerCredentials",
    "SupernodeKey",
    "generate_server_credentials",
    "generate_supernode_key",
    "main",
]

_CURVE = ec.SECP384R1()  # the curve flwr itself uses for node keys (NIST P-384)


@dataclass(frozen=True)
class ServerCredentials:
    """Paths of the CA certificate and the server certificate/key a SuperLink serves TLS with."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SupernodeKey:
    """Paths of one SuperNode's EC key pair (OpenSSH formats)."""

    private: Path
    public: Path


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def generate_server_credentials(
    out_dir: Path, hosts: Sequence[str], *, days: int = 365, overwrite: bool = False
) -> ServerCredentials:
    """Create a self-signed CA and a server certificate valid for every name in ``hosts``.

    Parameters
    ----------
    out_dir
        Folder for ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key``.
    hosts
        Host names and IP addresses the SuperNodes and the CLI will dial (SANs), e.g.
        ``["superlink", "localhost", "127.0.0.1"]``.
    days
        Validity of both certificates.
    overwrite
        Replace existing files; otherwise existing credentials are an error.

    Returns
    -------
    ServerCredentials
        Paths to pass to ``flower-superlink`` and to the SuperNodes.
    """
    if not hosts:
        raise ValueError("no hosts given; pass the names/IPs nodes dial, e.g. 127.0.0.1")
    if days <= 0:
        raise ValueError(f"days must be > 0, got {days}")
    creds = ServerCredentials(out_dir / "ca.crt", out_dir / "server.pem", out_dir / "server.key")
    existing = [p for p in (creds.ca_cert, creds.server_cert, creds.server_key) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--force) to replace it")

    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(_CURVE)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bitfed development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(_CURVE)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_subject_alt_names(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    atomic_write(out_dir / "ca.key", _private_pem(ca_key), mode=0o600)
    atomic_write(creds.server_key, _private_pem(server_key), mode=0o600)
    atomic_write(creds.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write(creds.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return creds


def generate_supernode_key(out_dir: Path, name: str, *, overwrite: bool = False) -> SupernodeKey:
    """Create one SuperNode's EC P-384 key pair: ``<name>`` (OpenSSH private, 0600), ``.pub``.

    Register the public half on the server (``bitfed-server --supernode-key <name>.pub`` or
    ``flwr supernode register``); the device keeps the private half
    (``bitfed-client --auth-key <name>``).
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad key name {name!r}; use a plain file name such as supernode-1")
    key = SupernodeKey(out_dir / name, out_dir / f"{name}.pub")
    if key.private.exists() and not overwrite:
        raise FileExistsError(f"{key.private} exists; pass overwrite=True (--force) to replace it")
    private = ec.generate_private_key(_CURVE)
    atomic_write(
        key.private,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write(key.public, public + f" bitfed-{name}\n".encode())
    return key


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m server.certs --out DIR --hosts H1,H2 --supernodes N``."""
    parser = argparse.ArgumentParser(
        prog="python -m server.certs",
        description="Generate development TLS certificates and SuperNode keys (paths only are "
        "printed; never use these in production).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--hosts",
        default="localhost,127.0.0.1",
        help="comma-separated host names/IPs the nodes dial (server certificate SANs)",
    )
    parser.add_argument("--supernodes", type=int, default=0, help="number of node keys")
    parser.add_argument("--days", type=int, default=365, help="certificate validity")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        creds = generate_server_credentials(args.out, hosts, days=args.days, overwrite=args.force)
        keys = [
            generate_supernode_key(args.out, f"supernode-{k}", overwrite=args.force)
            for k in range(1, args.supernodes + 1)
        ]
    except (ValueError, FileExistsError) as err:
        sys.exit(f"server.certs: {err}")
    print(f"CA certificate:     {creds.ca_cert}")
    print(f"server certificate: {creds.server_cert} (SANs: {', '.join(hosts)})")
    print(f"server key:         {creds.server_key} (secret, 0600)")
    for key in keys:
        print(f"SuperNode key:      {key.private} (secret, 0600), public {key.public}")


if __name__ == "__main__":
    main()
