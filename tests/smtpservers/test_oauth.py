"""OAuth 2.0 for XOAUTH2: "Generate tokens" through Microsoft's and Google's
authorization-code flow, and refreshing before expiry, against fake
providers that answer like the real ones (see providers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.roles import ADMINISTRATOR
from accounts.services import user_create
from dispatchers.transports import ConnectionLost, Outcome
from jobs.models import Job, JobRun, Notification
from smtpservers.models import GlobalOptions, SmtpServer
from smtpservers.oauth import OAuthError, oauth_token_refresh, oauth_tokens_refresh
from smtpservers.services import connection_test
from smtpservers.tasks import refresh_oauth_tokens

from .providers import (
    GOOGLE_CLIENT_ID,
    GOOGLE_CLIENT_SECRET,
    MS_CLIENT_ID,
    MS_CLIENT_SECRET,
    REDIRECT_URI,
    TENANT,
    Provider,
    identity_providers,
)
from .servers import ACCESS_TOKEN, USER, Pki, smtp_server
from .test_transport_auth import send

pytestmark = pytest.mark.django_db

Auth = SmtpServer.AuthMethod
OFFICE365, GMAIL = SmtpServer.OAuthProvider.OFFICE365, SmtpServer.OAuthProvider.GMAIL
CALLBACK = "/smtp/oauth/callback/"


@pytest.fixture
def idp(pki: Pki, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The fake providers, with Herald configured to use them and to trust
    their certificate (requests reads REQUESTS_CA_BUNDLE, msal too)."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text(pki.ca_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with identity_providers(pki) as provider:
        settings.HERALD_PUBLIC_URL = "http://testserver"
        settings.HERALD_MICROSOFT_AUTHORITY_HOST = provider.base_url
        settings.HERALD_GOOGLE_AUTH_URL = f"{provider.base_url}/o/oauth2/v2/auth"
        settings.HERALD_GOOGLE_TOKEN_URL = f"{provider.base_url}/token"
        provider.next_access_token = "access-from-the-provider"
        yield provider


@pytest.fixture
def options(key: str) -> GlobalOptions:
    return GlobalOptions.objects.create(
        office365_client_id=MS_CLIENT_ID,
        office365_client_secret=MS_CLIENT_SECRET,
        office365_tenant=TENANT,
        gmail_client_id=GOOGLE_CLIENT_ID,
        gmail_client_secret=GOOGLE_CLIENT_SECRET,
    )


def oauth_server(provider: str, **fields: Any) -> SmtpServer:
    fields.setdefault("name", f"{provider} relay")
    return SmtpServer.objects.create(
        host="smtp.example.org",
        port=587,
        security=SmtpServer.Security.STARTTLS,
        auth_method=Auth.OAUTH2,
        oauth_provider=provider,
        username=USER,
        **fields,
    )


def consent(client: Client, server: SmtpServer) -> dict[str, str]:
    """Click "Generate tokens"; return the query of the consent page URL."""
    response = client.post(
        reverse("admin:smtpservers_smtpserver_generate_tokens", args=[server.pk])
    )
    assert response.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlparse(response["Location"]).query).items()}


def stored(server: SmtpServer) -> tuple[str, str]:
    server.refresh_from_db()
    return server.oauth_access_token.reveal(), server.oauth_refresh_token.reveal()


def raw_columns(server: SmtpServer) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oauth_access_token || oauth_refresh_token FROM smtpservers_smtpserver "
            "WHERE id = %s",
            [server.pk],
        )
        return cursor.fetchone()[0]


def notification(server: SmtpServer) -> Notification | None:
    return Notification.objects.filter(
        key=f"smtpserver:{server.pk}:oauth", resolved_at__isnull=True
    ).first()


# --- Generate tokens ----------------------------------------------------------------


def test_office365_consent_asks_for_smtp_send_with_offline_access(
    idp: Provider, options: GlobalOptions, administrator_client: Client
) -> None:
    server = oauth_server(OFFICE365)
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_generate_tokens", args=[server.pk])
    )
    location = urlparse(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        f"{idp.base_url}/{TENANT}/oauth2/v2.0/authorize"
    )
    query = parse_qs(location.query)
    assert set(query["scope"][0].split()) >= {
        "https://outlook.office.com/SMTP.Send",
        "offline_access",
    }
    assert query["client_id"] == [MS_CLIENT_ID]
    assert query["redirect_uri"] == [REDIRECT_URI]
    assert query["login_hint"] == [USER]
    assert query["state"][0]


def test_the_office365_callback_stores_the_tokens_encrypted_with_their_expiry(
    idp: Provider, options: GlobalOptions, administrator_client: Client
) -> None:
    server = oauth_server(OFFICE365)
    query = consent(administrator_client, server)
    code = idp.user_consents("microsoft", code_challenge=query["code_challenge"])
    response = administrator_client.get(CALLBACK, {"code": code, "state": query["state"]})
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:smtpservers_smtpserver_change", args=[server.pk])
    access, refresh = stored(server)
    assert access == "access-from-the-provider"
    assert refresh in idp.refresh_tokens
    assert timedelta(minutes=58) < server.oauth_expires_at - timezone.now() <= timedelta(hours=1)
    assert "access-from-the-provider" not in raw_columns(server)
    assert refresh not in raw_columns(server)
    page = administrator_client.get(response["Location"]).content.decode()
    assert f"New OAuth 2.0 tokens are stored for “{server.name}”" in page
    assert "access-from-the-provider" not in page and refresh not in page


def test_the_gmail_flow_asks_for_offline_access_and_stores_the_tokens(
    idp: Provider, options: GlobalOptions, administrator_client: Client
) -> None:
    server = oauth_server(GMAIL)
    query = consent(administrator_client, server)
    assert query["scope"] == "https://mail.google.com/"
    assert (query["access_type"], query["prompt"]) == ("offline", "consent")
    assert query["client_id"] == GOOGLE_CLIENT_ID and query["redirect_uri"] == REDIRECT_URI
    code = idp.user_consents("google", code_challenge=query["code_challenge"])
    administrator_client.get(CALLBACK, {"code": code, "state": query["state"], "scope": "x"})
    access, refresh = stored(server)
    assert access == "access-from-the-provider" and refresh.startswith("google-refresh-")
    assert server.oauth_expires_at > timezone.now() + timedelta(minutes=58)


@pytest.mark.parametrize("provider", [OFFICE365, GMAIL])
def test_a_forged_state_is_refused_and_nothing_is_saved(
    idp: Provider, options: GlobalOptions, administrator_client: Client, provider: str
) -> None:
    server = oauth_server(provider, oauth_refresh_token="the-old-refresh-token")
    query = consent(administrator_client, server)
    code = idp.user_consents("microsoft" if provider == OFFICE365 else "google")
    response = administrator_client.get(CALLBACK, {"code": code, "state": "forged-" + "x" * 30})
    assert response.status_code == 400
    assert "does not belong to a “Generate tokens” started in this browser" in (
        response.content.decode()
    )
    assert stored(server) == ("", "the-old-refresh-token")
    assert idp.token_requests() == []
    assert query["state"]  # the real one was never used


def test_a_replayed_callback_is_refused(
    idp: Provider, options: GlobalOptions, administrator_client: Client
) -> None:
    server = oauth_server(GMAIL)
    query = consent(administrator_client, server)
    code = idp.user_consents("google", code_challenge=query["code_challenge"])
    answer = {"code": code, "state": query["state"]}
    assert administrator_client.get(CALLBACK, answer).status_code == 302
    first = stored(server)
    idp.next_access_token = "a-second-token"
    assert administrator_client.get(CALLBACK, answer).status_code == 400
    assert stored(server) == first
    assert len(idp.token_requests()) == 1


def test_a_consent_older_than_fifteen_minutes_is_refused(
    idp: Provider, options: GlobalOptions, administrator_client: Client
) -> None:
    server = oauth_server(GMAIL)
    query = consent(administrator_client, server)
    session = administrator_client.session
    session["herald_oauth_flows"][query["state"]]["started"] -= 16 * 60
    session.save()
    code = idp.user_consents("google", code_challenge=query["code_challenge"])
    response = administrator_client.get(CALLBACK, {"code": code, "state": query["state"]})
    assert response.status_code == 400
    assert "is older than 15 minutes" in response.content.decode()
    assert stored(server) == ("", "") and idp.token_requests() == []


def test_a_state_started_in_another_browser_is_refused(
    idp: Provider, options: GlobalOptions, administrator_client: Client
) -> None:
    server = oauth_server(GMAIL)
    query = consent(administrator_client, server)
    code = idp.user_consents("google", code_challenge=query["code_challenge"])
    other = Client()
    other.force_login(
        user_create(
            username="eve", email="eve@example.org", password="x-Pass-4567", role=ADMINISTRATOR
        )
    )
    response = other.get(CALLBACK, {"code": code, "state": query["state"]})
    assert response.status_code == 400
    assert stored(server) == ("", "")


def test_a_denied_consent_says_so_and_saves_nothing(
    idp: Provider, options: GlobalOptions, administrator_client: Client
) -> None:
    server = oauth_server(OFFICE365)
    query = consent(administrator_client, server)
    response = administrator_client.get(
        CALLBACK,
        {
            "error": "access_denied",
            "error_description": "AADSTS65004: User declined to consent to access the app.",
            "state": query["state"],
        },
        follow=True,
    )
    assert (
        "No tokens were stored: The provider did not grant access: access_denied: "
        "AADSTS65004: User declined"
    ) in response.content.decode()
    assert stored(server) == ("", "")


def test_generate_tokens_without_global_options_says_where_to_set_them(
    idp: Provider, key: str, administrator_client: Client
) -> None:
    server = oauth_server(OFFICE365)
    url = reverse("admin:smtpservers_smtpserver_generate_tokens", args=[server.pk])
    response = administrator_client.post(url, follow=True)
    assert "The Office 365 client ID and client secret are not set" in response.content.decode()
    assert "Global options › Modern Authentication Options" in response.content.decode()


def test_the_button_shows_only_for_oauth_servers(
    key: str, administrator_client: Client, server: SmtpServer
) -> None:
    oauth = oauth_server(GMAIL)

    def button(server: SmtpServer) -> bool:
        page = administrator_client.get(
            reverse("admin:smtpservers_smtpserver_change", args=[server.pk])
        ).text
        action = reverse("admin:smtpservers_smtpserver_generate_tokens", args=[server.pk])
        return f'action="{action}"' in page and ">Generate tokens</button>" in page

    assert button(oauth)
    assert not button(server)


# --- refreshing -----------------------------------------------------------------------


def expiring(provider: str, idp: Provider, **fields: Any) -> SmtpServer:
    """A server whose access token dies in two minutes."""
    if "oauth_refresh_token" not in fields:
        fields["oauth_refresh_token"] = idp.issue_refresh_token(
            "microsoft" if provider == OFFICE365 else "google"
        )
    return oauth_server(
        provider,
        oauth_access_token="the-old-access-token",
        oauth_expires_at=timezone.now() + timedelta(minutes=2),
        **fields,
    )


def test_office365_refresh_stores_the_new_access_and_rotated_refresh_token(
    idp: Provider, options: GlobalOptions
) -> None:
    server = expiring(OFFICE365, idp)
    old_refresh = server.oauth_refresh_token
    assert oauth_token_refresh(server=server) is True
    access, refresh = stored(server)
    assert access == "access-from-the-provider"
    assert refresh != old_refresh and refresh in idp.refresh_tokens
    assert server.oauth_expires_at > timezone.now() + timedelta(minutes=58)
    request = idp.token_requests()[-1]
    assert request["grant_type"] == "refresh_token" and request["refresh_token"] == old_refresh


def test_gmail_refresh_keeps_the_refresh_token_unless_google_rotates_it(
    idp: Provider, options: GlobalOptions
) -> None:
    server = expiring(GMAIL, idp)
    kept = server.oauth_refresh_token
    oauth_token_refresh(server=server)
    assert stored(server) == ("access-from-the-provider", kept)
    idp.google_rotates = True
    SmtpServer.objects.filter(pk=server.pk).update(oauth_expires_at=timezone.now())
    server.refresh_from_db()
    oauth_token_refresh(server=server)
    assert stored(server)[1] != kept and stored(server)[1] in idp.refresh_tokens


def test_a_token_far_from_expiry_is_not_refreshed(idp: Provider, options: GlobalOptions) -> None:
    server = expiring(OFFICE365, idp)
    SmtpServer.objects.filter(pk=server.pk).update(
        oauth_expires_at=timezone.now() + timedelta(minutes=30)
    )
    server.refresh_from_db()
    assert oauth_token_refresh(server=server) is False
    assert idp.token_requests() == []


@pytest.mark.parametrize("provider", [OFFICE365, GMAIL])
def test_a_refused_refresh_raises_the_notification_then_success_resolves_it(
    idp: Provider, options: GlobalOptions, provider: str
) -> None:
    server = expiring(provider, idp, oauth_refresh_token="revoked-refresh-token")
    with pytest.raises(OAuthError, match="invalid_grant"):
        oauth_token_refresh(server=server)
    assert stored(server) == ("the-old-access-token", "revoked-refresh-token")
    note = notification(server)
    assert note is not None and note.level == Notification.Level.ERROR
    assert f"SMTP server “{server.name}”" in note.title
    assert "Generate tokens again" in note.message
    assert f"/admin/smtpservers/smtpserver/{server.pk}/change/" in note.message
    if provider == OFFICE365:  # the first line of Microsoft's description, no trace ids
        assert "invalid_grant: AADSTS70008: The provided authorization code" in note.message
        assert "Trace ID" not in note.message
    else:
        assert "invalid_grant: Token has been expired or revoked." in note.message

    fresh = idp.issue_refresh_token("microsoft" if provider == OFFICE365 else "google")
    SmtpServer.objects.filter(pk=server.pk).update(oauth_refresh_token=fresh)
    server.refresh_from_db()
    oauth_token_refresh(server=server)
    assert notification(server) is None


def test_the_job_refreshes_what_is_due_and_records_its_run(
    idp: Provider, options: GlobalOptions
) -> None:
    due = expiring(OFFICE365, idp, name="Due")
    later = expiring(GMAIL, idp, name="Later")
    SmtpServer.objects.filter(pk=later.pk).update(
        oauth_expires_at=timezone.now() + timedelta(minutes=40)
    )
    broken = expiring(GMAIL, idp, name="Broken", oauth_refresh_token="revoked")
    inactive = expiring(OFFICE365, idp, name="Off", is_active=False)
    assert refresh_oauth_tokens() == 1
    assert stored(due)[0] == "access-from-the-provider"
    assert stored(later)[0] == stored(inactive)[0] == "the-old-access-token"
    assert notification(broken) is not None  # the server's problem, not the job's
    run = JobRun.objects.get(job=Job.REFRESH_OAUTH_TOKENS)
    assert (run.outcome, run.items_processed) == (JobRun.Outcome.OK, 1)
    assert oauth_tokens_refresh() == 0  # nothing due any more but the broken one


# --- sending after a refresh ---------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("provider", [OFFICE365, GMAIL])
def test_an_xoauth2_send_refreshes_first_and_logs_in_with_the_new_token(
    idp: Provider, options: GlobalOptions, make_server: Any, pki: Pki, provider: str
) -> None:
    idp.next_access_token = ACCESS_TOKEN  # the one the SMTP server accepts
    refresh = idp.issue_refresh_token("microsoft" if provider == OFFICE365 else "google")
    with smtp_server(pki, mode="ssl", mechanisms=("XOAUTH2",)) as (port, handler):
        server = make_server(
            port,
            security=SmtpServer.Security.SSL,
            ca_bundle=pki.ca_pem,
            auth_method=Auth.OAUTH2,
            oauth_provider=provider,
            username=USER,
            oauth_access_token="ya29.expired",
            oauth_refresh_token=refresh,
            oauth_expires_at=timezone.now() + timedelta(seconds=30),
        )
        result = send(server)
    assert result.outcome is Outcome.ACCEPTED
    assert handler.logins == [("XOAUTH2", USER)]
    assert stored(server)[0] == ACCESS_TOKEN
    if provider == OFFICE365:
        assert stored(server)[1] not in ("", refresh)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_send_whose_refresh_fails_stops_and_raises_the_notification(
    idp: Provider, options: GlobalOptions, make_server: Any, pki: Pki
) -> None:
    with smtp_server(pki, mode="ssl", mechanisms=("XOAUTH2",)) as (port, handler):
        server = make_server(
            port,
            security=SmtpServer.Security.SSL,
            ca_bundle=pki.ca_pem,
            auth_method=Auth.OAUTH2,
            oauth_provider=OFFICE365,
            username=USER,
            oauth_access_token="ya29.expired",
            oauth_refresh_token="revoked",
            oauth_expires_at=timezone.now() - timedelta(minutes=1),
        )
        with pytest.raises(ConnectionLost) as excinfo:
            send(server)
        report = connection_test(server=server)
    assert excinfo.value.retry_pointless
    assert str(excinfo.value).startswith("Could not refresh the OAuth 2.0 access token: ")
    assert report.message.startswith("Failed at AUTH: Could not refresh the OAuth 2.0 ")
    assert report.message.endswith("Generate tokens again.")
    assert handler.logins == [] and handler.received == []
    note = notification(server)
    # The refresh failed twice (send, test); the send also stopped the server.
    assert note is not None and note.occurrences == 3


# --- Global options --------------------------------------------------------------------


def test_global_options_page_keeps_the_secrets_write_only_and_encrypted(
    key: str, administrator_client: Client, settings: Any
) -> None:
    settings.HERALD_PUBLIC_URL = "https://herald.example.org"
    response = administrator_client.get(
        reverse("admin:smtpservers_globaloptions_changelist"), follow=True
    )
    page = response.content.decode()
    assert "<h1>Global options</h1>" in page
    assert "Modern Authentication Options" in page
    assert "https://herald.example.org/smtp/oauth/callback/" in page
    url = response.redirect_chain[-1][0]
    fields = {
        "office365_client_id": MS_CLIENT_ID,
        "office365_client_secret": MS_CLIENT_SECRET,
        "office365_tenant": TENANT,
        "gmail_client_id": GOOGLE_CLIENT_ID,
        "gmail_client_secret": GOOGLE_CLIENT_SECRET,
    }
    assert administrator_client.post(url, fields).status_code == 302
    page = administrator_client.get(url).content.decode()
    assert MS_CLIENT_SECRET not in page and GOOGLE_CLIENT_SECRET not in page
    assert MS_CLIENT_ID in page
    with connection.cursor() as cursor:
        cursor.execute("SELECT office365_client_secret FROM smtpservers_globaloptions")
        assert MS_CLIENT_SECRET not in cursor.fetchone()[0]
    # Blank keeps the stored secret.
    administrator_client.post(url, {**fields, "office365_client_secret": ""})
    assert GlobalOptions.load().office365_client_secret.reveal() == MS_CLIENT_SECRET


def test_a_bad_tenant_is_refused_and_nothing_saved(key: str, administrator_client: Client) -> None:
    url = reverse("admin:smtpservers_globaloptions_change", args=[GlobalOptions.load().pk])
    response = administrator_client.post(
        url, {"office365_tenant": "contoso/../common", "office365_client_id": "x"}
    )
    assert response.status_code == 200
    assert "Enter the tenant ID (a GUID), its domain" in response.content.decode()
    assert GlobalOptions.load().office365_client_id == ""


@pytest.mark.parametrize("role", ["Marketer", "Operator"])
def test_only_administrators_see_global_options(key: str, client: Client, role: str) -> None:
    user = user_create(username="pat", email="pat@example.org", password="x-Pass-4567", role=role)
    client.force_login(user)
    response = client.get(reverse("admin:smtpservers_globaloptions_changelist"))
    assert response.status_code in (302, 403)
    assert GlobalOptions.objects.count() == 0
    assert client.get(CALLBACK, {"state": "x"}).status_code in (302, 403)
