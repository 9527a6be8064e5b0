"""Write a self-signed placeholder certificate for DOMAIN unless a certificate is there already.

nginx refuses to start without the certificate its configuration names, and certbot needs nginx
running to answer the HTTP-01 challenge: this one-shot breaks the circle. The lineage is marked
with a `.placeholder` file so that `certificates.sh issue` knows it may replace it.

Usage: python placeholder_certificate.py  (environment: DOMAIN, CERTBOT_CONFIG_DIR=/etc/letsencrypt)
Needs only the `cryptography` package, which the certbot image ships.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


def write_placeholder(live: Path, domain: str) -> bool:
    """Create live/{fullchain,privkey}.pem and the marker; False when a certificate exists."""
    if (live / "fullchain.pem").exists():
        return False
    live.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_file = live / "privkey.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (live / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (live / ".placeholder").write_text("self-signed until certbot issues the real certificate\n")
    return True


def main() -> int:
    domain = os.environ.get("DOMAIN", "").strip()
    if not domain:
        print("placeholder_certificate: DOMAIN must be set", file=sys.stderr)
        return 2
    live = Path(os.environ.get("CERTBOT_CONFIG_DIR", "/etc/letsencrypt")) / "live" / domain
    if write_placeholder(live, domain):
        print(f"placeholder_certificate: wrote a self-signed placeholder for {domain} in {live}")
    else:
        print(f"placeholder_certificate: {live} has a certificate already")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
