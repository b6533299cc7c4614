"""The email service providers Herald sends through, by way of django-anymail.

One row per provider: its anymail backend, the name of the backend's key
setting, and the API URL it uses unless the dispatcher gives another
(Mailgun EU, SparkPost EU, a Postal server). Mailjet and Amazon SES need
two credentials; the API key field then holds both as ``id:secret``.

For the tracking webhook (bounces/webhooks.py): what the provider signs
its webhooks with, as the dispatcher page asks for it ("" when it signs
nothing, or with the API key, and the shared secret is all we add), and
which events to switch on at the provider.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class Provider:
    label: str
    backend: str
    key_setting: str = "api_key"
    default_url: str = ""  # shown as a hint; "" when the URL is not configurable
    url_required: bool = False
    key_pair: str = ""  # "id:secret" providers: what the two halves are called
    url_hint: str = ""
    webhook_key: str = ""
    webhook_events: str = ""


PROVIDERS: dict[str, Provider] = {
    "sendgrid": Provider(
        "SendGrid",
        "anymail.backends.sendgrid.EmailBackend",
        default_url="https://api.sendgrid.com/v3/",
        webhook_key="the verification key of the Signed Event Webhook (Settings > Mail "
        "Settings > Event Webhook), without its BEGIN/END lines",
        webhook_events="Dropped, Deferred, Bounced, Delivered, Opened, Clicked, Spam Reports, "
        "Unsubscribes, Group Unsubscribes",
    ),
    "mailgun": Provider(
        "Mailgun",
        "anymail.backends.mailgun.EmailBackend",
        default_url="https://api.mailgun.net/v3",
        url_hint="EU region: https://api.eu.mailgun.net/v3",
        webhook_key="the HTTP webhook signing key (Sending > Webhooks)",
        webhook_events="Permanent Failure, Temporary Failure, Spam Complaints, Unsubscribes, "
        "Delivered, Opens, Clicks",
    ),
    "amazon_ses": Provider(
        "Amazon SES",
        "anymail.backends.amazon_ses.EmailBackend",
        key_pair="access key ID:secret access key",
        url_hint="The regional endpoint, e.g. https://email.eu-west-1.amazonaws.com "
        "(its region is used); blank: the AWS_REGION of the environment.",
        webhook_events="the configuration set's SNS event destination: Bounces, Complaints, "
        "Rejects, Deliveries, Delivery delays, Opens, Clicks. Subscribe this URL to its topic "
        "(HTTPS, raw message delivery off) and enter the topic's ARN: Herald checks Amazon's "
        "signature and confirms the subscription itself",
    ),
    "postmark": Provider(
        "Postmark",
        "anymail.backends.postmark.EmailBackend",
        key_setting="server_token",
        default_url="https://api.postmarkapp.com/",
        webhook_events="Bounce, Spam Complaint, Subscription Change, Delivery, Open, Click",
    ),
    "sparkpost": Provider(
        "SparkPost",
        "anymail.backends.sparkpost.EmailBackend",
        default_url="https://api.sparkpost.com/api/v1/",
        url_hint="EU: https://api.eu.sparkpost.com/api/v1/",
        webhook_events="Bounce, Out of Band, Policy Rejection, Spam Complaint, Delay, "
        "Delivery, Open, Click, List Unsubscribe, Link Unsubscribe; Authentication: Basic "
        "Auth with the user and password of this URL",
    ),
    "brevo": Provider(
        "Brevo (Sendinblue)",
        "anymail.backends.brevo.EmailBackend",
        default_url="https://api.brevo.com/v3/",
        webhook_events="Hard bounce, Soft bounce, Blocked, Invalid email, Complaint, "
        "Unsubscribed, Deferred, Delivered, Opened, Clicked",
    ),
    "mailjet": Provider(
        "Mailjet",
        "anymail.backends.mailjet.EmailBackend",
        default_url="https://api.mailjet.com/v3.1/",
        key_pair="API key:secret key",
        webhook_events="sent, open, click, bounce, blocked, spam, unsub",
    ),
    "mailersend": Provider(
        "MailerSend",
        "anymail.backends.mailersend.EmailBackend",
        key_setting="api_token",
        default_url="https://api.mailersend.com/v1/",
        webhook_key="the webhook's signing secret (Domains > Webhooks)",
        webhook_events="activity.hard_bounced, activity.soft_bounced, activity.spam_complaint, "
        "activity.unsubscribed, activity.delivered, activity.opened, activity.clicked",
    ),
    "mandrill": Provider(
        "Mandrill (Mailchimp Transactional)",
        "anymail.backends.mandrill.EmailBackend",
        default_url="https://mandrillapp.com/api/1.0",
        webhook_key="the webhook's key (Settings > Webhooks); Mandrill signs the URL exactly "
        "as shown here",
        webhook_events="hard_bounce, soft_bounce, reject, spam, unsub, deferral, send, open, click",
    ),
    "mailtrap": Provider(
        "Mailtrap",
        "anymail.backends.mailtrap.EmailBackend",
        key_setting="api_token",
        default_url="https://send.api.mailtrap.io/api/",
        webhook_key="the webhook's signing secret (Settings > Webhooks)",
        webhook_events="Delivery, Bounce, Soft Bounce, Spam, Unsubscribe, Reject, Suspension, "
        "Open, Click",
    ),
    "postal": Provider(
        "Postal",
        "anymail.backends.postal.EmailBackend",
        url_required=True,
        url_hint="Your Postal server, e.g. https://postal.example.com",
        webhook_key="the server's public key: the p= value printed by `postal default-dkim-record`",
        webhook_events="MessageSent, MessageDelayed, MessageDeliveryFailed, MessageBounced, "
        "MessageLinkClicked",
    ),
    "resend": Provider(
        "Resend",
        "anymail.backends.resend.EmailBackend",
        default_url="https://api.resend.com/",
        webhook_key="the webhook's signing secret (whsec_...)",
        webhook_events="email.bounced, email.complained, email.delivered, "
        "email.delivery_delayed, email.opened, email.clicked",
    ),
    "unisender_go": Provider(
        "Unisender Go",
        "anymail.backends.unisender_go.EmailBackend",
        url_required=True,
        url_hint="Your account's API URL, e.g. https://go1.unisender.ru/ru/transactional/api/v1/",
        webhook_events="transactional_email_status, every status, JSON (Unisender Go signs "
        "with the API key above)",
    ),
}

CHOICES = [(code, provider.label) for code, provider in PROVIDERS.items()]


def webhook_key_problem(code: str, key: str) -> str:
    """Why a webhook signing key cannot be what the provider signs with ("":
    it can), so a mistyped key is caught on the dispatcher page rather than
    by refused webhooks."""
    key = key.strip()
    if not key:
        return ""
    if not key.isascii() or any(c.isspace() for c in key):
        return "A signing key has no spaces, line breaks or accented characters."
    if code in ("sendgrid", "postal"):
        pem = f"-----BEGIN PUBLIC KEY-----\n{key}\n-----END PUBLIC KEY-----"
        try:
            serialization.load_pem_public_key(pem.encode())
        except ValueError:
            return "Not a public key: paste its base64 text only, without BEGIN/END lines."
    if code == "resend":
        try:
            base64.b64decode(key.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            return "Not a Resend signing secret: it reads whsec_ and base64 text."
    return ""
