"""Microsoft's and Google's OAuth 2.0 endpoints, faked at HTTP level.

They lie beyond the network edge, so the tests run a local HTTPS server
(the test PKI's certificate) that answers like them, with their real
response shapes: Microsoft's OpenID discovery document and token
endpoint (msal talks to it exactly as it talks to
login.microsoftonline.com), and Google's token endpoint. Like the real
ones, they check the client secret, the redirect URI and PKCE, honour
each authorization code once, rotate Microsoft's refresh tokens, and
answer 400 invalid_grant for a code or refresh token they do not know.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from .servers import Pki

TENANT = "contoso.onmicrosoft.com"
MS_CLIENT_ID, MS_CLIENT_SECRET = "6731de76-14a6-49ae-97bc-6eba6914391e", "ms~client~secret"
GOOGLE_CLIENT_ID = "1234-herald.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "GOCSPX-google-client-secret"
REDIRECT_URI = "http://testserver/smtp/oauth/callback/"
OUTLOOK_SCOPES = {
    "https://outlook.office.com/SMTP.Send",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
}


@dataclass
class Grant:
    """What a code or refresh token was issued for."""

    provider: str
    code_challenge: str = ""


@dataclass
class Provider:
    """The state both fake providers share, and what they were asked."""

    base_url: str = ""
    codes: dict[str, Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, Grant] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # The access token the next successful token request hands out.
    next_access_token: str = ""
    # Google keeps the refresh token unless told to rotate it.
    google_rotates: bool = False
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def user_consents(self, provider: str, *, code_challenge: str = "") -> str:
        """What the consent page does: issue an authorization code."""
        code = f"{provider}-code-{next(self._serial)}"
        self.codes[code] = Grant(provider, code_challenge)
        return code

    def issue_refresh_token(self, provider: str) -> str:
        token = f"{provider}-refresh-{next(self._serial)}"
        self.refresh_tokens[token] = Grant(provider)
        return token

    def token_requests(self) -> list[dict[str, str]]:
        return [form for path, form in self.requests if path.endswith("token")]


def _error(description: str, error: str = "invalid_grant") -> tuple[int, dict[str, Any]]:
    return 400, {"error": error, "error_description": description}


def _microsoft_error(code: int, text: str, error: str = "invalid_grant") -> tuple[int, dict]:
    # Microsoft's shape: the AADSTS text with trace and correlation ids on
    # later lines, and the numeric codes apart.
    return 400, {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: 0f5d6e1b-8a1c\r\n"
        "Correlation ID: 3f1a9b2e-77c4\r\nTimestamp: 2026-11-25 23:00:00Z",
        "error_codes": [code],
        "timestamp": "2026-11-25 23:00:00Z",
        "trace_id": "0f5d6e1b-8a1c",
        "correlation_id": "3f1a9b2e-77c4",
    }


class _Handler(BaseHTTPRequestHandler):
    provider: Provider  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the tests read Provider.requests instead

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        path = urlparse(self.path).path
        self.provider.requests.append((path, {}))
        if path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
            self._answer(200, self._openid_configuration())
        else:
            self._answer(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlparse(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        with self.provider.lock:
            self.provider.requests.append((path, form))
            if path == f"/{TENANT}/oauth2/v2.0/token":
                status, body = self._microsoft_token(form)
            elif path == "/token":
                status, body = self._google_token(form)
            else:
                status, body = 404, {"error": "not_found"}
        self._answer(status, body)

    def _openid_configuration(self) -> dict[str, Any]:
        base = f"{self.provider.base_url}/{TENANT}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "tid"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }

    def _microsoft_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        p = self.provider
        if form.get("client_id") != MS_CLIENT_ID or form.get("client_secret") != (MS_CLIENT_SECRET):
            return _microsoft_error(
                7000215, "Invalid client secret provided.", error="invalid_client"
            )
        grant = form.get("grant_type")
        if grant == "authorization_code":
            issued = p.codes.pop(form.get("code", ""), None)
            if issued is None or issued.provider != "microsoft":
                return _microsoft_error(
                    70008, "The provided authorization code or refresh token has expired."
                )
            if form.get("redirect_uri") != REDIRECT_URI:
                return _microsoft_error(
                    50011, "The redirect URI specified in the request does not match."
                )
            if not _pkce_ok(issued, form):
                return _microsoft_error(501481, "The Code_Verifier does not match.")
        elif grant == "refresh_token":
            if p.refresh_tokens.pop(form.get("refresh_token", ""), None) is None:
                return _microsoft_error(
                    70008,
                    "The provided authorization code or refresh token has expired due to "
                    "inactivity.",
                )
        else:
            return _microsoft_error(70003, "The app requested an unsupported grant type.")
        # One mail resource scope: SMTP for servers, IMAP or POP for bounce mailboxes.
        scopes = set(form.get("scope", "").split()) & OUTLOOK_SCOPES
        if len(scopes) != 1:
            return _microsoft_error(70011, "The provided value for scope is not valid.")
        scope = scopes.pop()
        # Microsoft rotates the refresh token on every use.
        return 200, {
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": p.next_access_token,
            "refresh_token": p.issue_refresh_token("microsoft"),
        }

    def _google_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        p = self.provider
        if form.get("client_id") != GOOGLE_CLIENT_ID or form.get("client_secret") != (
            GOOGLE_CLIENT_SECRET
        ):
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        body = {
            "access_token": p.next_access_token,
            "expires_in": 3599,
            "scope": "https://mail.google.com/",
            "token_type": "Bearer",
        }
        grant = form.get("grant_type")
        if grant == "authorization_code":
            issued = p.codes.pop(form.get("code", ""), None)
            if issued is None or issued.provider != "google":
                return _error("Malformed auth code.")
            if form.get("redirect_uri") != REDIRECT_URI:
                return _error("Bad Request", error="redirect_uri_mismatch")
            if not _pkce_ok(issued, form):
                return _error("Invalid code verifier.")
            return 200, {**body, "refresh_token": p.issue_refresh_token("google")}
        if grant == "refresh_token":
            token = form.get("refresh_token", "")
            if token not in p.refresh_tokens:
                return _error("Token has been expired or revoked.")
            if p.google_rotates:
                del p.refresh_tokens[token]
                return 200, {**body, "refresh_token": p.issue_refresh_token("google")}
            return 200, body
        return _error(f"Invalid grant_type: {grant}", error="unsupported_grant_type")


def _pkce_ok(issued: Grant, form: dict[str, str]) -> bool:
    if not issued.code_challenge:
        return True
    digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=") == issued.code_challenge


@contextmanager
def identity_providers(pki: Pki) -> Iterator[Provider]:
    """Both fake providers on one HTTPS port of the loopback address."""
    provider = Provider()
    handler = type("Handler", (_Handler,), {"provider": provider})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = pki.server_context().wrap_socket(httpd.socket, server_side=True)
    provider.base_url = f"https://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
