"""A real Dovecot (Debian's dovecot-imapd and dovecot-pop3d) for the
tests: started on free loopback ports with its own configuration, base
directory, passwd-file users and maildirs in a temporary folder, and
killed at the end. No system port, no system configuration is touched.

Mail is delivered as an MTA's local delivery does: a file written into
the user's Maildir/tmp and renamed into Maildir/new.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config.embedded import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
PACKAGES = ["dovecot-imapd", "dovecot-pop3d"]


def dovecot_available() -> str:
    """The path of dovecot, installing Debian's packages when missing and
    allowed (root with apt-get, as in CI); skips the test otherwise."""
    if os.path.exists(DOVECOT):
        return DOVECOT
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
        if subprocess.run(command, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(command, env=env, capture_output=True)
        if os.path.exists(DOVECOT):
            return DOVECOT
    pytest.skip(f"dovecot is not installed and cannot be installed here ({', '.join(PACKAGES)})")


def _certificate(folder: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imap.herald.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class Dovecot:
    user = "bounces"
    password = "s3cret-Dove"

    def __init__(self, *, oauth2_introspection_url: str = "") -> None:
        self.binary = dovecot_available()
        self.oauth2_url = oauth2_introspection_url
        self.root = Path(tempfile.mkdtemp(prefix="herald-dovecot-"))
        self.root.chmod(0o755)
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        self.process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            # Dovecot refuses to access mail as root; nobody owns the maildir.
            nobody = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
            self.internal_user, self.login_user = "dovecot", "dovenull"
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
            self.internal_user = self.login_user = pwd.getpwuid(os.getuid()).pw_name

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / self.user / "Maildir"

    def _config(self) -> str:
        home = self.root / "mail" / self.user
        oauth = ""
        mechanisms = "plain login"
        if self.oauth2_url:
            mechanisms += " xoauth2 oauthbearer"
            (self.root / "oauth2.conf").write_text(
                f"introspection_mode = post\nintrospection_url = {self.oauth2_url}\n"
                "username_attribute = username\nactive_attribute = active\n"
                "active_value = true\nforce_introspection = yes\n"
            )
            oauth = (
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {self.root}/oauth2.conf\n}}\n"
            )
        return f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.root}/cert.pem
ssl_key = <{self.root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
default_internal_user = {self.internal_user}
default_login_user = {self.login_user}
first_valid_uid = {self.mail_uid}
first_valid_gid = 0
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
{oauth}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.root}/passwd
  default_fields = uid={self.mail_uid} gid={self.mail_gid} home={home}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.ports["imap"]}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.ports["imaps"]}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.ports["pop3"]}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.ports["pop3s"]}
    ssl = yes
  }}
}}
"""

    def start(self) -> Dovecot:
        _certificate(self.root)
        (self.root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        self._chown_mail()
        config = self.root / "dovecot.conf"
        config.write_text(self._config())
        self.process = subprocess.Popen(
            [self.binary, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.process.stderr.read().decode()}")
            if all(self._listening(port) for port in self.ports.values()):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen within 15 s: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def _chown_mail(self) -> None:
        if os.geteuid() != 0:
            return
        for path in [self.root / "mail", *(self.root / "mail").rglob("*")]:
            os.chown(path, self.mail_uid, self.mail_gid)

    def deliver(self, message: bytes, folder: str = "") -> None:
        """Local delivery into the maildir (of ``folder``, a Maildir++ name)."""
        base = self.maildir / f".{folder}" if folder else self.maildir
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.herald-test"
        tmp = base / "tmp" / name
        tmp.write_bytes(message.replace(b"\r\n", b"\n"))
        if os.geteuid() == 0:
            os.chown(tmp, self.mail_uid, self.mail_gid)
        tmp.rename(base / "new" / name)

    def stored(self, folder: str = "") -> list[bytes]:
        """Every message in the folder, read from disk."""
        base = self.maildir / f".{folder}" if folder else self.maildir
        if not base.exists():
            return []
        return [p.read_bytes() for sub in ("new", "cur") for p in sorted((base / sub).iterdir())]
