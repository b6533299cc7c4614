"""OAuth 2.0 (XOAUTH2) bounce mailboxes, Office 365 and Gmail: tokens
from the fake providers of the SMTP server tests (the same token handling),
a real Dovecot that accepts a bearer token only when its introspection
endpoint (a local HTTP server) says it is active."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.roles import ADMINISTRATOR, OPERATOR
from accounts.services import user_create
from bounces import services
from bounces.models import Bounce, BounceMailbox
from jobs.models import Notification
from smtpservers.models import GlobalOptions
from tests.smtp import Received
from tests.smtpservers.providers import (
    GOOGLE_CLIENT_ID,
    GOOGLE_CLIENT_SECRET,
    MS_CLIENT_ID,
    MS_CLIENT_SECRET,
    TENANT,
    Provider,
    identity_providers,
)
from tests.smtpservers.servers import Pki, make_pki

from .dovecot import Dovecot
from .reports import dsn

pytestmark = pytest.mark.django_db

OFFICE365, GMAIL = "office365", "gmail"
GOOD_TOKEN = "EwBgA8l6BAAU-the-mailbox-access-token"
CALLBACK = "/smtp/oauth/callback/"


class Introspection:
    """Dovecot's oauth2 passdb asks this endpoint (RFC 7662 style) whether
    a bearer token is active and whose it is."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        seen = self.tokens

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                token = parse_qs(self.rfile.read(length).decode()).get("token", [""])[0]
                seen.append(token)
                body = {"active": "true", "username": Dovecot.user}
                if token != GOOD_TOKEN:
                    body = {"active": "false"}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/introspect"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def introspection() -> Iterator[Introspection]:
    server = Introspection()
    yield server
    server.stop()


@pytest.fixture
def dovecot(introspection: Introspection) -> Iterator[Dovecot]:
    server = Dovecot(oauth2_introspection_url=introspection.url).start()
    yield server
    server.stop()


@pytest.fixture
def idp(pki: Pki, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(pki.ca_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with identity_providers(pki) as provider:
        settings.HERALD_PUBLIC_URL = "http://testserver"
        settings.HERALD_MICROSOFT_AUTHORITY_HOST = provider.base_url
        settings.HERALD_GOOGLE_AUTH_URL = f"{provider.base_url}/o/oauth2/v2/auth"
        settings.HERALD_GOOGLE_TOKEN_URL = f"{provider.base_url}/token"
        provider.next_access_token = GOOD_TOKEN
        yield provider


@pytest.fixture
def options(db: None) -> GlobalOptions:
    return GlobalOptions.objects.create(
        office365_client_id=MS_CLIENT_ID,
        office365_client_secret=MS_CLIENT_SECRET,
        office365_tenant=TENANT,
        gmail_client_id=GOOGLE_CLIENT_ID,
        gmail_client_secret=GOOGLE_CLIENT_SECRET,
    )


def oauth_mailbox(dovecot: Dovecot, provider: str, protocol: str, **fields: Any) -> BounceMailbox:
    return BounceMailbox.objects.create(
        name=f"{provider} bounces",
        protocol=protocol,
        host="127.0.0.1",
        port=dovecot.ports[protocol],
        security=BounceMailbox.Security.NONE,
        timeout=5,
        auth_method=BounceMailbox.AuthMethod.OAUTH2,
        oauth_provider=provider,
        username=dovecot.user,
        **fields,
    )


def expiring(dovecot: Dovecot, idp: Provider, provider: str, protocol: str) -> BounceMailbox:
    """A mailbox whose access token dies in two minutes."""
    refresh = idp.issue_refresh_token("microsoft" if provider == OFFICE365 else "google")
    return oauth_mailbox(
        dovecot,
        provider,
        protocol,
        oauth_access_token="the-old-access-token",
        oauth_refresh_token=refresh,
        oauth_expires_at=timezone.now() + timedelta(minutes=2),
    )


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
@pytest.mark.parametrize("provider", [OFFICE365, GMAIL])
def test_the_job_refreshes_the_token_and_logs_in_by_xoauth2(
    sent: dict[str, Received],
    dovecot: Dovecot,
    introspection: Introspection,
    idp: Provider,
    options: GlobalOptions,
    provider: str,
    protocol: str,
) -> None:
    mailbox = expiring(dovecot, idp, provider, protocol)
    dovecot.deliver(dsn(sent["user0@example.org"]))

    assert services.bounces_process() == 1

    assert Bounce.objects.get().recipient == "user0@example.org"
    assert dovecot.stored() == []
    assert introspection.tokens == [GOOD_TOKEN]  # the refreshed one, not the old
    mailbox.refresh_from_db()
    assert mailbox.oauth_access_token.reveal() == GOOD_TOKEN
    assert mailbox.oauth_expires_at > timezone.now() + timedelta(minutes=58)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT oauth_access_token FROM bounces_bouncemailbox WHERE id = %s", [mailbox.pk]
        )
        assert GOOD_TOKEN not in cur.fetchone()[0]  # encrypted at rest
    [request] = idp.token_requests()
    if provider == OFFICE365:  # Office 365 grants IMAP and POP3 separately
        resource = "IMAP.AccessAsUser.All" if protocol == "imap" else "POP.AccessAsUser.All"
        assert f"https://outlook.office.com/{resource}" in request["scope"].split()


def test_a_refused_refresh_reads_nothing_and_raises_the_mailbox_notification(
    dovecot: Dovecot, introspection: Introspection, idp: Provider, options: GlobalOptions
) -> None:
    mailbox = expiring(dovecot, idp, GMAIL, "imap")
    BounceMailbox.objects.filter(pk=mailbox.pk).update(oauth_refresh_token="revoked")
    dovecot.deliver(b"Subject: waiting\n\nbody\n")

    with pytest.raises(services.MailboxError, match="could not be refreshed: .*invalid_grant"):
        services.bounces_process()

    assert introspection.tokens == []  # it did not even try to log in
    assert len(dovecot.stored()) == 1
    note = Notification.objects.get(key=f"bouncemailbox:{mailbox.pk}:oauth")
    assert note.title.startswith(f"Bounce mailbox “{mailbox.name}”: the OAuth 2.0 access token")
    assert "Bounces in this mailbox are not read until it is fixed." in note.message
    assert f"/admin/bounces/bouncemailbox/{mailbox.pk}/change/" in note.message


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_token_the_server_refuses_fails_test_connection(
    dovecot: Dovecot, idp: Provider, options: GlobalOptions, protocol: str
) -> None:
    mailbox = oauth_mailbox(
        dovecot,
        OFFICE365,
        protocol,
        oauth_access_token="revoked-by-the-tenant",
        oauth_expires_at=timezone.now() + timedelta(hours=1),
    )
    report = services.connection_test(mailbox=mailbox)
    assert not report.ok
    assert (
        report.message
        == {
            "imap": "The server refused: [AUTHENTICATIONFAILED] Authentication failed.",
            "pop3": "The server refused: -ERR [AUTH] Authentication failed.",
        }[protocol]
    )

    BounceMailbox.objects.filter(pk=mailbox.pk).update(oauth_access_token=GOOD_TOKEN)
    mailbox.refresh_from_db()
    assert services.connection_test(mailbox=mailbox).ok


def test_without_tokens_it_says_to_generate_them(dovecot: Dovecot, options: GlobalOptions) -> None:
    mailbox = oauth_mailbox(dovecot, GMAIL, "imap")
    report = services.connection_test(mailbox=mailbox)
    assert report.message == (
        "No OAuth 2.0 token yet: click “Generate tokens” on the mailbox and sign in."
    )


def test_generate_tokens_for_an_office365_mailbox(
    dovecot: Dovecot, idp: Provider, options: GlobalOptions, client: Client
) -> None:
    mailbox = oauth_mailbox(dovecot, OFFICE365, "imap")
    admin = user_create(username="ada", email="a@herald.test", password="pw-1x", role=ADMINISTRATOR)
    client.force_login(admin)
    page = client.get(reverse("admin:bounces_bouncemailbox_change", args=[mailbox.pk]))
    assert "Generate tokens" in page.content.decode()

    response = client.post(
        reverse("admin:bounces_bouncemailbox_generate_tokens", args=[mailbox.pk])
    )
    query = {k: v[0] for k, v in parse_qs(urlparse(response["Location"]).query).items()}
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in query["scope"].split()
    code = idp.user_consents("microsoft", code_challenge=query["code_challenge"])
    response = client.get(CALLBACK, {"code": code, "state": query["state"]})

    assert response["Location"] == reverse("admin:bounces_bouncemailbox_change", args=[mailbox.pk])
    mailbox.refresh_from_db()
    assert mailbox.oauth_access_token.reveal() == GOOD_TOKEN
    assert mailbox.oauth_refresh_token.reveal() in idp.refresh_tokens
    page = client.get(response["Location"]).content.decode()
    assert f"New OAuth 2.0 tokens are stored for “{mailbox.name}”" in page
    assert GOOD_TOKEN not in page
    assert services.connection_test(mailbox=mailbox).ok


def test_only_who_may_change_mailboxes_can_store_their_tokens(
    dovecot: Dovecot, idp: Provider, options: GlobalOptions, client: Client
) -> None:
    mailbox = oauth_mailbox(dovecot, GMAIL, "imap")
    admin = user_create(username="ada", email="a@herald.test", password="pw-1x", role=ADMINISTRATOR)
    client.force_login(admin)
    response = client.post(
        reverse("admin:bounces_bouncemailbox_generate_tokens", args=[mailbox.pk])
    )
    query = {k: v[0] for k, v in parse_qs(urlparse(response["Location"]).query).items()}
    flows = client.session["herald_oauth_flows"]
    # The same browser session, now logged in as an operator.
    operator = user_create(username="op", email="o@herald.test", password="pw-1x", role=OPERATOR)
    client.force_login(operator)
    saved = client.session
    saved["herald_oauth_flows"] = flows
    saved.save()
    code = idp.user_consents("google", code_challenge=query["code_challenge"])
    response = client.get(CALLBACK, {"code": code, "state": query["state"]})
    assert response.status_code == 403
    mailbox.refresh_from_db()
    assert not mailbox.oauth_access_token
