"""OAuth 2.0 tokens for XOAUTH2: the authorization-code flow behind
"Generate tokens", and refreshing the access token before it expires.

The tokens belong to a row that logs in with them: an SMTP server, or a
bounce mailbox (IMAP/POP3). Any model with the fields of TokenHolder
works; the callback finds the row again by the model label it stored.

Office 365 goes through msal; Gmail through Google's OAuth 2.0 endpoints
with plain HTTP. The client ids and secrets live on GlobalOptions, the
endpoint base URLs in settings. Tokens are stored encrypted on the
server row. A refresh holds the row lock, so two workers never both
spend one refresh token, and a rotated refresh token is always saved.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import warnings
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

import msal
import requests
from django.apps import apps
from django.conf import settings
from django.db import connections, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from jobs.models import Notification
from jobs.services import notification_raise, notification_resolve

from .encryption import Secret, reveal
from .models import GlobalOptions, SmtpServer

logger = logging.getLogger(__name__)

# A holder's oauth_office365_scopes name only the resource: msal adds
# offline_access (for the refresh token), openid and profile by itself
# and refuses to be given them.
GMAIL_SCOPE = "https://mail.google.com/"
# Refresh this long before the access token expires: a session opened
# just before expiry must not log in with a token that dies mid-batch.
REFRESH_MARGIN = timedelta(minutes=5)
# A consent page left open longer than this starts over (the message of
# OAuthStateError says so).
FLOW_MAX_AGE = timedelta(minutes=15)
HTTP_TIMEOUT = 30
SESSION_KEY = "herald_oauth_flows"

Provider = SmtpServer.OAuthProvider


class TokenHolder(Protocol):
    """A row that logs in by XOAUTH2 (SmtpServer, bounces.BounceMailbox)."""

    pk: Any
    name: str
    username: str
    oauth_provider: str
    oauth_access_token: Any
    oauth_refresh_token: Any
    oauth_expires_at: datetime | None
    # Office 365 asks for one scope per protocol (SMTP.Send, IMAP..., POP...).
    oauth_office365_scopes: list[str]
    # What stops working while its token cannot be refreshed, for people.
    oauth_unavailable: str
    _meta: Any

    @property
    def uses_oauth2(self) -> bool: ...

    def get_oauth_provider_display(self) -> str: ...

    def save(self, *, update_fields: list[str]) -> None: ...


class OAuthError(Exception):
    """A step of the flow or a refresh failed; ``str()`` is for people."""


class OAuthStateError(OAuthError):
    """The callback's state is not one this browser session started."""


def notification_key(server: TokenHolder) -> str:
    return f"{server._meta.model_name}:{server.pk}:oauth"


def _label(server: TokenHolder) -> str:
    return str(server._meta.verbose_name)


def _change_url(server: TokenHolder) -> str:
    meta = server._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[server.pk])


def redirect_uri() -> str:
    """Where the providers send the browser back; register it with them."""
    return settings.HERALD_PUBLIC_URL + reverse("smtpservers:oauth_callback")


# --- the authorization-code flow ------------------------------------------------


def oauth_flow_start(*, server: TokenHolder, session: Any) -> str:
    """Remember a new flow in the browser session; return the consent page URL."""
    if not server.uses_oauth2:
        raise OAuthError(
            f"This {_label(server)} does not use OAuth 2.0: choose OAuth 2.0 as the "
            "authentication type and a mail server, save, then generate tokens."
        )
    options = _options(server.oauth_provider)
    if server.oauth_provider == Provider.OFFICE365:
        app = _msal_app(options)
        with warnings.catch_warnings():
            # msal recommends form_post, but that answer is a cross-site POST,
            # for which browsers withhold the (SameSite=Lax) session cookie,
            # and the state could not be checked against this session.
            warnings.filterwarnings("ignore", message="response_mode='form_post'")
            flow = app.initiate_auth_code_flow(
                server.oauth_office365_scopes,
                redirect_uri=redirect_uri(),
                login_hint=server.username or None,
                response_mode="query",
            )
        state, url = flow["state"], flow["auth_uri"]
    else:
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        flow = {"code_verifier": verifier}
        query = {
            "client_id": options.gmail_client_id,
            "redirect_uri": redirect_uri(),
            "response_type": "code",
            "scope": GMAIL_SCOPE,
            # offline + consent: Google returns a refresh token every time,
            # not only on the first consent.
            "access_type": "offline",
            "prompt": "consent",
            "state": state,
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        }
        if server.username:
            query["login_hint"] = server.username
        url = f"{settings.HERALD_GOOGLE_AUTH_URL}?{urlencode(query)}"
    pending = _pending(session)
    pending[state] = {
        "model": server._meta.label_lower,
        "server": server.pk,
        "provider": server.oauth_provider,
        "flow": flow,
        "started": timezone.now().timestamp(),
    }
    session[SESSION_KEY] = pending
    return url


def oauth_flow_model(*, session: Any, state: str) -> str:
    """The model label ("smtpservers.smtpserver") a pending flow is for, so
    the callback can check the permission before anything is stored."""
    entry = _pending(session).get(state) or {}
    return str(entry.get("model", "smtpservers.smtpserver"))


def oauth_flow_finish(*, session: Any, params: dict[str, str]) -> TokenHolder:
    """The callback: check the state, trade the code for tokens, store them.
    A state is used once: it leaves the session before anything else."""
    pending = _pending(session)
    entry = pending.pop(params.get("state", ""), None)
    session[SESSION_KEY] = pending
    if entry is None:
        raise OAuthStateError(
            "This sign-in answer does not belong to a “Generate tokens” started in this "
            "browser, was already used, or is older than 15 minutes. Nothing was saved; "
            "start again with “Generate tokens”."
        )
    model = apps.get_model(entry.get("model", "smtpservers.smtpserver"))
    server = model.objects.filter(pk=entry["server"]).first()
    if server is None or server.oauth_provider != entry["provider"]:
        raise OAuthError(
            f"The {model._meta.verbose_name} was deleted or its mail server changed "
            "meanwhile; nothing was saved."
        )
    if "error" in params:
        raise OAuthError(f"The provider did not grant access: {_describe(params)}")
    options = _options(server.oauth_provider)
    if server.oauth_provider == Provider.OFFICE365:
        result = _msal_call(
            lambda: _msal_app(options).acquire_token_by_auth_code_flow(
                entry["flow"], params, scopes=server.oauth_office365_scopes
            )
        )
    else:
        result = _google_token(
            options,
            grant_type="authorization_code",
            code=params.get("code", ""),
            redirect_uri=redirect_uri(),
            code_verifier=entry["flow"]["code_verifier"],
        )
    if "error" in result or not result.get("access_token"):
        raise OAuthError(f"The provider refused the tokens: {_describe(result)}")
    if not result.get("refresh_token"):
        raise OAuthError(
            "The provider sent no refresh token, so Herald could not keep the access "
            "token fresh; nothing was saved. Check that the app may ask for offline access."
        )
    _tokens_store(server, result)
    notification_resolve(key=notification_key(server))
    return server


def _pending(session: Any) -> dict[str, Any]:
    """The flows this browser session started, the stale ones dropped."""
    oldest = timezone.now().timestamp() - FLOW_MAX_AGE.total_seconds()
    flows = session.get(SESSION_KEY) or {}
    return {state: flow for state, flow in flows.items() if flow.get("started", 0) >= oldest}


# --- refreshing ------------------------------------------------------------------


def oauth_refresh_due(*, server: TokenHolder, now: datetime | None = None) -> bool:
    """The access token expires within REFRESH_MARGIN and can be refreshed."""
    if not server.uses_oauth2 or not server.oauth_refresh_token:
        return False
    if server.oauth_expires_at is None:
        return True
    return server.oauth_expires_at - (now or timezone.now()) <= REFRESH_MARGIN


def oauth_token_refresh(*, server: TokenHolder) -> bool:
    """Refresh the access token if it is due, under the server's row lock.
    Updates ``server`` in place; returns whether a refresh happened. A
    failure raises the server's notification and OAuthError; a success
    resolves the notification."""
    failure: OAuthError | None = None
    with transaction.atomic():
        locked = type(server).objects.select_for_update().get(pk=server.pk)
        if not oauth_refresh_due(server=locked):
            _tokens_copy(locked, server)  # another worker refreshed meanwhile
            return False
        try:
            result = _refresh(locked)
        except OAuthError as exc:
            failure = exc
        else:
            _tokens_store(locked, result)
            _tokens_copy(locked, server)
    if failure is not None:
        _refresh_failed(server, failure)
        raise failure
    notification_resolve(key=notification_key(server))
    return True


def oauth_token_refresh_detached(*, server: TokenHolder) -> None:
    """oauth_token_refresh for async code (run it in a worker thread): its own
    database connection, so the rotated refresh token is committed even if
    the caller's transaction rolls back, and closed afterwards."""
    try:
        oauth_token_refresh(server=server)
    finally:
        connections.close_all()


def oauth_tokens_refresh() -> int:
    """The refresh-OAuth-tokens job: refresh every active server's access
    token that is due. A failure is that server's notification, not the
    job's. Returns how many were refreshed."""
    soon = timezone.now() + REFRESH_MARGIN
    due = (
        SmtpServer.objects.filter(is_active=True, auth_method=SmtpServer.AuthMethod.OAUTH2)
        .exclude(oauth_provider="")
        .exclude(oauth_refresh_token="")
        .filter(Q(oauth_expires_at__isnull=True) | Q(oauth_expires_at__lte=soon))
    )
    refreshed = 0
    for server in due:
        try:
            refreshed += oauth_token_refresh(server=server)
        except OAuthError:
            continue  # raised as the server's notification
    return refreshed


def _refresh(server: TokenHolder) -> dict[str, Any]:
    options = _options(server.oauth_provider)
    refresh_token = reveal(server.oauth_refresh_token)
    if server.oauth_provider == Provider.OFFICE365:
        result = _msal_call(
            lambda: _msal_app(options).acquire_token_by_refresh_token(
                refresh_token, scopes=server.oauth_office365_scopes
            )
        )
    else:
        result = _google_token(options, grant_type="refresh_token", refresh_token=refresh_token)
    if "error" in result or not result.get("access_token"):
        raise OAuthError(f"{server.get_oauth_provider_display()} refused: {_describe(result)}")
    return result


def _refresh_failed(server: TokenHolder, exc: OAuthError) -> None:
    path = _change_url(server)
    url = settings.HERALD_PUBLIC_URL + path
    label = _label(server)
    notification_raise(
        link=path,
        key=notification_key(server),
        title=f"{label[:1].upper()}{label[1:]} “{server.name}”: the OAuth 2.0 access token "
        "could not be refreshed",
        message=f"{exc} {server.oauth_unavailable} "
        f"What to do: Generate tokens again (open {url} and click “Generate tokens”).",
        level=Notification.Level.ERROR,
    )


# --- storage and the providers ---------------------------------------------------


def _tokens_store(server: TokenHolder, result: dict[str, Any]) -> None:
    server.oauth_access_token = Secret(result["access_token"])
    if result.get("refresh_token"):  # rotated; Google usually keeps the old one
        server.oauth_refresh_token = Secret(result["refresh_token"])
    server.oauth_expires_at = timezone.now() + timedelta(
        seconds=int(result.get("expires_in") or 3600)
    )
    server.save(
        update_fields=[
            "oauth_access_token",
            "oauth_refresh_token",
            "oauth_expires_at",
            "updated_at",
        ]
    )


def _tokens_copy(source: TokenHolder, target: TokenHolder) -> None:
    target.oauth_access_token = source.oauth_access_token
    target.oauth_refresh_token = source.oauth_refresh_token
    target.oauth_expires_at = source.oauth_expires_at


def _options(provider: str) -> GlobalOptions:
    options = GlobalOptions.load()
    if provider == Provider.OFFICE365:
        ready = options.office365_client_id and options.office365_client_secret
    else:
        ready = options.gmail_client_id and options.gmail_client_secret
    if not ready:
        label = Provider(provider).label
        raise OAuthError(
            f"The {label} client ID and client secret are not set. An administrator sets "
            "them once under Global options › Modern Authentication Options."
        )
    return options


def _msal_app(options: GlobalOptions) -> msal.ConfidentialClientApplication:
    authority = settings.HERALD_MICROSOFT_AUTHORITY_HOST.rstrip("/")
    try:
        return msal.ConfidentialClientApplication(
            options.office365_client_id,
            client_credential=reveal(options.office365_client_secret),
            authority=f"{authority}/{options.office365_tenant or 'organizations'}",
            # Only the configured host is trusted; no look-up elsewhere.
            instance_discovery=False,
            timeout=HTTP_TIMEOUT,
        )
    except ValueError as exc:  # the tenant's OpenID configuration was refused
        raise OAuthError(f"Microsoft does not know this tenant ({exc}).") from exc
    except requests.RequestException as exc:
        raise OAuthError(f"Could not reach Microsoft's sign-in service ({exc}).") from exc


def _msal_call(call: Any) -> dict[str, Any]:
    try:
        return call()
    except ValueError as exc:  # msal's own checks of the flow
        raise OAuthError(f"The sign-in answer was refused ({exc}).") from exc
    except requests.RequestException as exc:
        raise OAuthError(f"Could not reach Microsoft's sign-in service ({exc}).") from exc


def _google_token(options: GlobalOptions, **data: str) -> dict[str, Any]:
    data |= {
        "client_id": options.gmail_client_id,
        "client_secret": reveal(options.gmail_client_secret),
    }
    try:
        response = requests.post(settings.HERALD_GOOGLE_TOKEN_URL, data=data, timeout=HTTP_TIMEOUT)
    except requests.RequestException as exc:
        raise OAuthError(f"Could not reach Google's token endpoint ({exc}).") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise OAuthError(f"Google's token endpoint answered HTTP {response.status_code}.")
    return body


def _describe(result: dict[str, Any]) -> str:
    error = result.get("error") or "no access token in the answer"
    description = str(result.get("error_description") or "").strip()
    # Microsoft's descriptions carry trace and correlation ids on later lines.
    first_line = description.splitlines()[0] if description else ""
    return f"{error}: {first_line}" if first_line else str(error)
