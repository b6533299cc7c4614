"""IMAP bounce mailboxes against a real Dovecot: the job reads the folder,
records, applies the rules, deletes (or moves) only what it recorded,
never records a message twice, and Test connection says what is wrong."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from accounts.roles import ADMINISTRATOR
from accounts.services import user_create
from bounces import mailbox as sessions
from bounces import services
from bounces.models import Bounce, BounceMailbox, Kind
from campaigns.models import CampaignItem, Contact, Suppression
from jobs.models import Notification
from tests.smtp import Received, free_port

from .conftest import interval_passes, item_of
from .dovecot import Dovecot
from .reports import dsn, plain

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot().start()
    yield server
    server.stop()


@pytest.fixture
def imap(db: None, dovecot: Dovecot) -> BounceMailbox:
    return BounceMailbox.objects.create(
        name="Bounces (IMAP)",
        protocol=BounceMailbox.Protocol.IMAP,
        host="127.0.0.1",
        port=dovecot.ports["imap"],
        security=BounceMailbox.Security.NONE,
        timeout=5,
        username=dovecot.user,
        password=dovecot.password,
    )


def test_a_hard_bounce_is_recorded_and_the_message_deleted(
    sent: dict[str, Received],
    imap: BounceMailbox,
    dovecot: Dovecot,
) -> None:
    dovecot.deliver(dsn(sent["user0@example.org"]))
    dovecot.deliver(dsn(sent["user1@example.org"], status="4.2.2", diagnostic="smtp; 452 full"))

    assert services.bounces_process() == 2

    assert item_of("user0@example.org").contact.status == Contact.Status.BOUNCED
    assert Suppression.objects.get().pattern == "user0@example.org"
    assert item_of("user1@example.org").contact.status == Contact.Status.ACTIVE  # 1 of 3
    assert sorted(Bounce.objects.values_list("kind", flat=True)) == [Kind.HARD, Kind.SOFT]
    assert dovecot.stored() == []


def test_moved_instead_of_deleted_and_never_recorded_twice(
    sent: dict[str, Received],
    imap: BounceMailbox,
    dovecot: Dovecot,
) -> None:
    imap.move_to_folder = "Processed"
    imap.save()
    report = dsn(sent["user0@example.org"])
    dovecot.deliver(report)

    assert services.bounces_process() == 1
    assert dovecot.stored() == []
    [moved] = dovecot.stored("Processed")
    assert moved == report.replace(b"\r\n", b"\n")

    # Someone drags it back into the inbox: known by its digest, moved again.
    dovecot.deliver(report)
    interval_passes(imap)
    assert services.bounces_process() == 0
    assert Bounce.objects.count() == 1
    assert dovecot.stored() == [] and len(dovecot.stored("Processed")) == 2


def test_a_server_without_move_gets_copy_and_delete(
    sent: dict[str, Received],
    imap: BounceMailbox,
    dovecot: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init = sessions.ImapSession.__init__

    def without_move(self: sessions.ImapSession, *args: object) -> None:
        init(self, *args)
        self.capabilities.discard("MOVE")  # as on servers older than RFC 6851

    monkeypatch.setattr(sessions.ImapSession, "__init__", without_move)
    imap.move_to_folder = "Processed"
    imap.save()
    dovecot.deliver(dsn(sent["user0@example.org"]))

    assert services.bounces_process() == 1
    assert dovecot.stored() == []
    assert len(dovecot.stored("Processed")) == 1


def test_what_cannot_be_read_is_kept_unread(
    sent: dict[str, Received],
    imap: BounceMailbox,
    dovecot: Dovecot,
) -> None:
    dovecot.deliver(plain("Re: Hello", "When is the next event?"))

    assert services.bounces_process() == 0

    assert len(dovecot.stored()) == 1
    seen = [p.name for p in (dovecot.maildir / "cur").iterdir() if ":2," in p.name]
    assert all("S" not in name.partition(":2,")[2] for name in seen)  # not marked as read
    assert "not a bounce" in Notification.objects.get().message


def test_a_session_that_breaks_deletes_nothing_and_the_next_run_records_nothing_twice(
    sent: dict[str, Received],
    imap: BounceMailbox,
    dovecot: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dovecot.deliver(dsn(sent["user0@example.org"]))
    dovecot.deliver(dsn(sent["user1@example.org"]))
    fetch = sessions.ImapSession.fetch
    calls = []

    def breaks_on_the_second(self: sessions.ImapSession, ref: str) -> bytes | None:
        calls.append(ref)
        if len(calls) == 2:
            raise ConnectionResetError("connection reset by peer")
        return fetch(self, ref)

    monkeypatch.setattr(sessions.ImapSession, "fetch", breaks_on_the_second)
    with pytest.raises(services.MailboxError):
        services.bounces_process()
    assert Bounce.objects.count() == 1
    assert len(dovecot.stored()) == 2  # flagged, but not expunged

    monkeypatch.setattr(sessions.ImapSession, "fetch", fetch)
    interval_passes(imap)
    assert services.bounces_process() == 1

    assert Bounce.objects.count() == 2
    assert dovecot.stored() == []


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_connection_over_tls_counts_the_messages_and_deletes_none(
    imap: BounceMailbox, dovecot: Dovecot, security: str
) -> None:
    dovecot.deliver(plain("one", "body"))
    imap.security = security
    imap.port = dovecot.ports["imaps" if security == "ssl" else "imap"]
    imap.verify_certificate = False
    imap.move_to_folder = "Done"

    report = services.connection_test(mailbox=imap)

    assert report.ok, report.message
    assert report.message == (
        "Connected and logged in; 1 message(s) waiting in “INBOX”; “Done” will be created."
    )
    assert len(dovecot.stored()) == 1
    imap.verify_certificate = True
    assert services.connection_test(mailbox=imap).message.startswith(
        "The server's certificate is not trusted"
    )


def test_connection_test_says_what_is_wrong(imap: BounceMailbox) -> None:
    imap.folder = "Bounce mail"
    assert services.connection_test(mailbox=imap).message.startswith(
        "Cannot open the folder “Bounce mail”: the server answered NO"
    )
    imap.password = "wrong"
    message = services.connection_test(mailbox=imap).message
    assert message == "The server refused: [AUTHENTICATIONFAILED] Authentication failed."


def test_non_ascii_folders_are_sent_in_modified_utf7() -> None:
    assert sessions.imap_utf7("Gelöschte & Entwürfe") == "Gel&APY-schte &- Entw&APw-rfe"
    assert sessions.imap_quote('a"b\\c') == '"a\\"b\\\\c"'


def test_the_admin_page_offers_imap_and_refuses_a_folder_for_pop3(client: Client) -> None:
    admin = user_create(
        username="admin", email="a@herald.test", password="pw-1x", role=ADMINISTRATOR
    )
    client.force_login(admin)
    form = {
        "name": "Bounces",
        "protocol": "pop3",
        "host": "127.0.0.1",
        "port": free_port(),
        "security": "ssl",
        "timeout": 30,
        "poll_interval": 5,
        "folder": "INBOX",
        "move_to_folder": "Processed",
        "auth_method": "password",
        "username": "bounces",
        "password": "pw",
    }
    page = client.get(reverse("admin:bounces_bouncemailbox_add")).content.decode()
    assert '<option value="imap">IMAP</option>' in page
    assert "IMAP: 993 with SSL, 143 otherwise." in page
    page = client.post(reverse("admin:bounces_bouncemailbox_add"), form).content.decode()
    assert "POP3 has no folders" in page
    assert not BounceMailbox.objects.exists()

    response = client.post(reverse("admin:bounces_bouncemailbox_add"), form | {"protocol": "imap"})
    assert response.status_code == 302
    mailbox = BounceMailbox.objects.get()
    assert (mailbox.protocol, mailbox.move_to_folder, mailbox.poll_interval) == (
        "imap",
        "Processed",
        5,
    )
    response = client.post(
        reverse("admin:bounces_bouncemailbox_changelist"),
        {"action": "test_connection", "_selected_action": [mailbox.pk]},
        follow=True,
    )
    [message] = [m for m in get_messages(response.wsgi_request) if "Connection refused" in str(m)]
    assert message.level_tag == "error"


def test_a_folder_name_cannot_inject_imap_commands(client: Client) -> None:
    mailbox = BounceMailbox(
        name="x", host="mail.example.org", username="u", folder='INBOX"\r\nA1 DELETE "INBOX'
    )
    with pytest.raises(Exception, match="Line breaks"):
        mailbox.full_clean()
