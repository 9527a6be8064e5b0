"""The certificate nginx serves for DOMAIN: always a loadable pair, switched only when a better one exists.

nginx reads CONFIG_DIR/served/DOMAIN/{fullchain,privkey}.pem, where served/DOMAIN is a symbolic
link to one of two directories, replaced atomically (rename of a new link over the old one):

- placeholder/DOMAIN: a self-signed certificate, so nginx can start before certbot's first
  issuance (certbot needs nginx running to answer the HTTP-01 challenge);
- live/DOMAIN: certbot's lineage, once an issuance succeeded. certbot renews it in place.

A failed issuance therefore never leaves nginx without a certificate: certbot writes its own
lineage next to the placeholder, and the link moves only after it succeeded.

Usage (environment: DOMAIN, CERTBOT_CONFIG_DIR=/etc/letsencrypt, CERTBOT_PUBLIC_DIR optional):
  python served_certificate.py placeholder   serve the lineage if certbot made one, else a
                                             placeholder (written if missing); the one-shot at start
  python served_certificate.py lineage       serve certbot's lineage (after a successful issuance)
Both copy the served chain (public, no key) to CERTBOT_PUBLIC_DIR/fullchain.pem when that is set,
for the hub's certificate expiry metric. Needs only `cryptography`, which the certbot image ships.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


def write_placeholder(directory: Path, domain: str) -> bool:
    """Create directory/{fullchain,privkey}.pem, self-signed for `domain`; False when present."""
    if (directory / "fullchain.pem").exists():
        return False
    directory.mkdir(parents=True, exist_ok=True)
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
    key_file = directory / "privkey.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


class ServedCertificate:
    """The served/DOMAIN link of one configuration directory and the two places it may point to."""

    def __init__(self, config_dir: Path, domain: str, public_dir: Path | None = None) -> None:
        self.domain = domain
        self.served = config_dir / "served" / domain
        self.placeholder = config_dir / "placeholder" / domain
        self.lineage = config_dir / "live" / domain
        self.renewal = config_dir / "renewal" / f"{domain}.conf"
        self.public_dir = public_dir

    def has_lineage(self) -> bool:
        return self.renewal.is_file() and (self.lineage / "fullchain.pem").exists()

    def serve_placeholder_unless_issued(self) -> str:
        """Point at the lineage if certbot made one, else at the placeholder (written if missing)."""
        self._adopt_old_placeholder()
        if self.has_lineage():
            return self._point_at(self.lineage)
        write_placeholder(self.placeholder, self.domain)
        if self.served.is_symlink() and (self.served / "fullchain.pem").exists():
            self._publish()
            return "kept"  # a loadable certificate is served already: never replace it by a worse one
        return self._point_at(self.placeholder)

    def serve_lineage(self) -> str:
        if not self.has_lineage():
            raise LookupError(f"{self.lineage} is not a certbot lineage: nothing to serve")
        return self._point_at(self.lineage)

    def _adopt_old_placeholder(self) -> None:
        # Before served/ existed, the placeholder sat in live/DOMAIN marked by .placeholder; certbot
        # refuses to create a lineage over it, so it moves to placeholder/DOMAIN.
        if (self.lineage / ".placeholder").exists() and not self.renewal.exists():
            self.placeholder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.placeholder, ignore_errors=True)
            os.replace(self.lineage, self.placeholder)
            (self.placeholder / ".placeholder").unlink()

    def _point_at(self, target: Path) -> str:
        self.served.parent.mkdir(parents=True, exist_ok=True)
        relative = os.path.relpath(target, self.served.parent)
        if not (self.served.is_symlink() and os.readlink(self.served) == relative):
            # A new link renamed over the old one: nginx sees the old pair or the new, never neither.
            staging = self.served.with_name(f".{self.domain}.new")
            staging.unlink(missing_ok=True)
            staging.symlink_to(relative)
            os.replace(staging, self.served)
        self._publish()
        return relative

    def _publish(self) -> None:
        if self.public_dir is None:
            return
        self.public_dir.mkdir(parents=True, exist_ok=True)
        staging = self.public_dir / ".fullchain.pem.new"
        shutil.copyfile(self.served / "fullchain.pem", staging)
        staging.chmod(0o644)
        os.replace(staging, self.public_dir / "fullchain.pem")


def main(argv: list[str]) -> int:
    domain = os.environ.get("DOMAIN", "").strip()
    command = argv[0] if argv else "placeholder"
    if not domain or command not in ("placeholder", "lineage"):
        print("usage: DOMAIN=name served_certificate.py placeholder|lineage", file=sys.stderr)
        return 2
    public = os.environ.get("CERTBOT_PUBLIC_DIR", "").strip()
    served = ServedCertificate(Path(os.environ.get("CERTBOT_CONFIG_DIR", "/etc/letsencrypt")), domain,
                               Path(public) if public else None)
    try:
        if command == "placeholder":
            target = served.serve_placeholder_unless_issued()
        else:
            target = served.serve_lineage()
    except (OSError, LookupError) as exc:
        print(f"served_certificate: {exc}", file=sys.stderr)
        return 1
    print(f"served_certificate: {served.served} -> {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
