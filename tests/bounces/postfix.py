"""A real Postfix (Debian's) for the tests: its own configuration, queue
and data directories in a temporary folder, one smtpd on a free loopback
port, started in the foreground and stopped at the end. No system port,
no system configuration, no DNS.

It accepts mail for a domain whose users do not exist (so its virtual(8)
delivery agent bounces them and its bounce(8) daemon writes genuine RFC
3464 reports), and delivers mail for the bounce domain into a Dovecot
maildir, as an MX in front of a bounce mailbox does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from config.embedded import free_port

from .dovecot import Dovecot

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


def postfix_available() -> str:
    if os.path.exists(POSTFIX) and os.geteuid() == 0:
        return POSTFIX
    if os.geteuid() != 0:
        pytest.skip("Postfix's master daemon must be started as root")
    if shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"]
        if subprocess.run(command, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(command, env=env, capture_output=True)
        if os.path.exists(POSTFIX):
            return POSTFIX
    pytest.skip("postfix is not installed and cannot be installed here")


# Only the daemons this test needs, none chrooted (the queue is ours).
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    def __init__(
        self,
        *,
        dovecot: Dovecot,
        bounce_domain: str,
        recipient_domain: str,
        existing: tuple[str, ...] = (),
    ) -> None:
        self.binary = postfix_available()
        self.root = Path(tempfile.mkdtemp(prefix="herald-postfix-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.dovecot = dovecot
        self.bounce_domain = bounce_domain
        self.recipient_domain = recipient_domain
        self.existing = existing
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    def _main_cf(self) -> str:
        mail = self.dovecot.root / "mail"
        return f"""\
compatibility_level = 3.6
queue_directory = {self.root}/queue
data_directory = {self.root}/data
maillog_file = {self.root}/maillog
maillog_file_prefixes = {self.root}
myhostname = mx.{self.recipient_domain}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
# Accept unknown users at RCPT, so that they bounce after acceptance:
# a delivery status notification, not a 550 in the SMTP dialogue.
smtpd_reject_unlisted_recipient = no
virtual_mailbox_domains = {self.bounce_domain}, {self.recipient_domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{self.conf}/vmailbox
virtual_uid_maps = static:{self.dovecot.mail_uid}
virtual_gid_maps = static:{self.dovecot.mail_gid}
virtual_minimum_uid = 1
recipient_delimiter = +
alias_maps =
alias_database =
relayhost =
smtputf8_enable = no
biff = no
smtp_dns_support_level = disabled
"""

    def start(self) -> Postfix:
        for sub in ("conf", "queue", "data"):
            (self.root / sub).mkdir()
        os.chown(self.root / "data", pwd.getpwnam("postfix").pw_uid, -1)
        # The VERP return path bounces+<token>.<sig>@ reaches bounces@ (the
        # recipient delimiter), whose maildir Dovecot serves.
        lines = [f"{Dovecot.user}@{self.bounce_domain} {Dovecot.user}/Maildir/"]
        lines += [f"{user}@{self.recipient_domain} delivered/{user}/" for user in self.existing]
        (self.conf / "vmailbox").write_text("\n".join(lines) + "\n")
        (self.conf / "main.cf").write_text(self._main_cf())
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf), "start-fg"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postfix exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if sock.recv(100).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postfix did not listen within 20 s: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run([self.binary, "-c", str(self.conf), "stop"], capture_output=True)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def delivered(self, user: str) -> list[bytes]:
        folder = self.dovecot.root / "mail" / "delivered" / user / "new"
        return [p.read_bytes() for p in folder.iterdir()] if folder.exists() else []
