from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.humanize.templatetags.humanize import intcomma
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from . import providers
from .domains import (
    sender_domain_archive,
    sender_domain_key_new,
    sender_domain_keys_fill,
    sender_domain_records,
    sender_domain_unarchive,
    sender_domain_verify,
)
from .models import (
    Dispatcher,
    DispatcherPool,
    PoolMember,
    ProviderRate,
    SenderDomain,
    validate_auth_token,
)
from .selectors import dispatcher_state, pool_members_status
from .services import dispatcher_connection_test, dispatcher_pause, dispatcher_resume
from .throttle import ProviderRateStatus, provider_rates_default, provider_rates_status


class DispatcherForm(forms.ModelForm):
    """A dispatcher added on a server that already has one relays through
    that server's SMTP server unless another is chosen: one computer,
    one mail service, as administrators expect."""

    class Meta:
        model = Dispatcher
        # What clean() reads; the admin passes the full list from its fieldsets.
        fields = ("server_name", "type", "delivery_mode", "smtp_server", "pacing")

    # The SMTP server taken from the server's dispatcher, for the message.
    smtp_server_from: Dispatcher | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if (
            self.instance.pk is None
            and not cleaned.get("smtp_server")
            and cleaned.get("server_name")
            and cleaned.get("type") == Dispatcher.Type.EMAIL
            and cleaned.get("delivery_mode") == Dispatcher.DeliveryMode.SMTP
        ):
            # Queues are lower-cased, so MAILER1 and mailer1 are one computer.
            neighbour = (
                Dispatcher.objects.filter(
                    server_name__iexact=cleaned["server_name"],
                    delivery_mode=Dispatcher.DeliveryMode.SMTP,
                    smtp_server__isnull=False,
                )
                .select_related("smtp_server")
                .order_by("-created_at", "-pk")
                .first()
            )
            if neighbour is not None:
                cleaned["smtp_server"] = neighbour.smtp_server
                self.smtp_server_from = neighbour
        return cleaned

    def clean_twilio_auth_token(self) -> str:
        token = (self.cleaned_data.get("twilio_auth_token") or "").strip()
        if token:  # blank keeps the stored token
            validate_auth_token(token)
        return token


class ProviderRateFormSet(forms.BaseInlineFormSet):
    """A post without this table (a script filling in the dispatcher's
    own fields) leaves the rates as they are instead of failing."""

    def __init__(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        prefix = kwargs.get("prefix") or self.get_default_prefix()
        if data is not None and f"{prefix}-TOTAL_FORMS" not in data:
            data = data.copy()
            data[f"{prefix}-TOTAL_FORMS"] = data[f"{prefix}-INITIAL_FORMS"] = "0"
        super().__init__(data, *args, **kwargs)


class ProviderRateInline(admin.TabularInline):
    model = ProviderRate
    formset = ProviderRateFormSet
    extra = 0
    fields = ("provider", "per_minute")
    verbose_name_plural = "Per-provider rates"
    classes = ("herald-email",)


@admin.register(Dispatcher)
class DispatcherAdmin(admin.ModelAdmin):
    form = DispatcherForm
    inlines = (ProviderRateInline,)
    list_display = (
        "name",
        "type",
        "delivery",
        "server_name",
        "messages_per_hour",
        "connections",
        "state",
    )
    list_select_related = ("smtp_server",)
    list_filter = ("type", "delivery_mode", "is_enabled")
    search_fields = ("name", "server_name", "from_email")
    readonly_fields = (
        "worker_command",
        "state",
        "sender_domain_status",
        "dmarc_alignment",
        "status_callback_url",
        "tracking_webhook",
        "provider_rates_now",
    )
    actions = ("pause", "resume", "test_connection")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "server_name",
                    "worker_command",
                    "type",
                    "is_enabled",
                    "state",
                )
            },
        ),
        (
            "Sending",
            {
                "fields": (
                    "messages_per_hour",
                    "messages_per_day",
                    "warmup_started_on",
                    "warmup_first_day",
                    "warmup_growth",
                    "batch_size",
                    "pacing",
                    "block_size",
                    "block_pause_minutes",
                    "connections",
                    "task_message_limit",
                    "check_suppressions",
                    "retry_failed_after_sending",
                    "provider_rates_now",
                    "delivery_mode",
                    "smtp_server",
                    "helo_name",
                    "pickup_directory",
                )
            },
        ),
        (
            "Email service API",
            {
                "description": "For the delivery mode “Email service API”: the provider's "
                "API key is stored encrypted and never shown again.",
                "fields": (
                    "esp_provider",
                    "esp_api_key",
                    "esp_api_url",
                    "tracking_webhook",
                    "esp_webhook_key",
                    "esp_sns_topic_arn",
                ),
            },
        ),
        (
            "File backup",
            {
                "description": "On top of any delivery mode: a copy of each sent message.",
                "fields": ("backup_directory",),
            },
        ),
        (
            "Login information",
            {
                "classes": ("herald-email",),
                "fields": (
                    "from_email",
                    "sender_domain_status",
                    "dmarc_alignment",
                    "from_name",
                    "reply_to",
                    "request_read_receipts",
                ),
            },
        ),
        (
            "SMS (Twilio)",
            {
                "classes": ("herald-sms",),
                "description": "For SMS dispatchers: the Twilio account that sends, from "
                "Twilio Console's Account Info, and who sends: a from number or a "
                "messaging service.",
                "fields": (
                    "twilio_account_sid",
                    "twilio_auth_token",
                    "sms_from_number",
                    "twilio_messaging_service_sid",
                    "status_callback_url",
                ),
            },
        ),
    )

    class Media:
        js = ("dispatchers/dispatcher_form.js",)

    @admin.display(description="tracking webhook")
    def tracking_webhook(self, obj: Dispatcher) -> str:
        """The URL to paste into the provider's webhook settings, with the
        shared secret as its basic-auth credentials, as anymail expects, the
        events to switch on, and whether the signing key is in place."""
        if obj.delivery_mode != Dispatcher.DeliveryMode.API or not obj.esp_provider:
            return "For the delivery mode “Email service API”."
        if not obj.pk:
            return "Shown once the dispatcher is saved."
        path = reverse("bounces:esp_tracking", args=[obj.esp_provider, obj.pk])
        scheme, _, host = settings.HERALD_PUBLIC_URL.partition("://")
        if settings.HERALD_WEBHOOK_SECRET:
            url = format_html(
                "<code>{}://{}@{}{}</code>", scheme, settings.HERALD_WEBHOOK_SECRET[0], host, path
            )
        else:
            url = format_html(
                '{}{} <br><span class="herald-sub">Set HERALD_WEBHOOK_SECRET (user:password) '
                "first: until then every webhook is refused.</span>",
                settings.HERALD_PUBLIC_URL,
                path,
            )
        provider = providers.PROVIDERS[obj.esp_provider]
        return format_html(
            '{}<br><span class="herald-sub">Paste this URL, secret included, into the '
            "provider's webhook settings. Events to switch on: {}.</span><br>{}",
            url,
            provider.webhook_events,
            _webhook_key_state(obj, provider),
        )

    @admin.display(description="status callback URL")
    def status_callback_url(self, obj: Dispatcher) -> str:
        # campaigns owns the callback view; read lazily (it imports this app).
        from campaigns.sms import status_callback_url

        if not obj.pk:
            return "Shown once the dispatcher is saved."
        return format_html(
            '<code>{}</code><br><span class="herald-sub">Herald sends it with every message; '
            "Twilio reports each message's delivery there, signed with the auth token.</span>",
            status_callback_url(dispatcher_id=obj.pk),
        )

    @admin.display(description="sender domain")
    def sender_domain_status(self, obj: Dispatcher) -> str:
        if not obj.from_email:
            return "—"
        problem = obj.sender_domain_problem
        if problem:
            return format_html(
                '<span class="herald-badge herald-badge--failed">Warning</span> '
                '<span class="herald-sub">{}: receivers may junk or reject this mail.</span>',
                problem,
            )
        return format_html(
            '<span class="herald-badge herald-badge--ok">Verified</span> '
            '<span class="herald-sub">{}</span>',
            obj.from_domain,
        )

    @admin.display(description="DMARC alignment")
    def dmarc_alignment(self, obj: Dispatcher) -> str:
        # campaigns builds the messages, so it owns the return path; read lazily
        # because campaigns imports this app's models.
        from campaigns.messages import bounce_domain

        from .signing import signer_for

        if not obj.from_email:
            return "—"
        signer = signer_for(dispatcher=obj)
        dkim_domain = signer.domain if signer else ""
        return_path = bounce_domain(obj).lower()
        return format_html_join(
            mark_safe("<br>"),  # format_html_join escapes a plain separator
            "{}: {}",
            (
                (
                    "DKIM",
                    f"aligned (d={dkim_domain})"
                    if dkim_domain
                    else "not aligned: no active DKIM key for this domain, mail leaves unsigned",
                ),
                (
                    "SPF (return path)",
                    f"aligned ({return_path})"
                    if aligned(obj.from_domain, return_path)
                    else f"not aligned: {return_path} is not {obj.from_domain} or below it",
                ),
            ),
        )

    @admin.display(description="delivery mode", ordering="delivery_mode")
    def delivery(self, obj: Dispatcher) -> str:
        if obj.delivery_mode == Dispatcher.DeliveryMode.API and obj.esp_provider:
            return f"Email service API ({obj.get_esp_provider_display()})"
        if obj.delivery_mode == Dispatcher.DeliveryMode.SMTP and obj.smtp_server:
            return f"SMTP relay ({obj.smtp_server})"
        return str(obj.get_delivery_mode_display())

    @admin.display(description="state")
    def state(self, obj: Dispatcher) -> str:
        state = dispatcher_state(dispatcher=obj)
        return format_html(
            '<span class="herald-badge herald-badge--{}">{}</span> '
            '<span class="herald-sub">{}</span>',
            state.badge,
            state.label,
            state.why,
        )

    @admin.display(description="per-provider rates now")
    def provider_rates_now(self, obj: Dispatcher) -> str:
        if not obj.pk:
            return "New SMTP and direct dispatchers get the default rates; edit them below."
        statuses = provider_rates_status(dispatcher=obj)
        if not statuses:
            return (
                "No per-provider rates: only the dispatcher's own limits apply. "
                "Add rates under “Per-provider rates” below."
            )
        return provider_rates_table(statuses)

    @admin.display(description="worker command")
    def worker_command(self, obj: Dispatcher) -> str:
        if not obj.pk:
            return "Shown once the dispatcher is saved."
        return f"celery -A config worker -Q {obj.queue} --hostname {obj.server_name}@%h"

    def save_model(self, request: HttpRequest, obj: Dispatcher, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.delivery_mode == Dispatcher.DeliveryMode.DIRECT:
            self.message_user(
                request,
                f"Direct delivery needs a static IP address whose PTR (reverse DNS) record "
                f"is {obj.helo_name}, outgoing port 25 open, and {obj.helo_name} in the SPF "
                "record of the sender domain; otherwise receivers reject or junk the mail.",
                messages.WARNING,
            )
        neighbour = getattr(form, "smtp_server_from", None)
        if neighbour is not None:
            self.message_user(
                request,
                f"Relays through SMTP server “{obj.smtp_server}”, the mail service of "
                f"dispatcher “{neighbour}” on server {obj.server_name}.",
                messages.INFO,
            )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if not change:
            provider_rates_default(dispatcher=form.instance)

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("dispatchers.pause_dispatcher")

    @admin.action(description="Pause selected dispatchers", permissions=["pause"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Dispatcher]) -> None:
        reason = f"Paused by {request.user.get_username()}"
        n = sum(dispatcher_pause(dispatcher=d, reason=reason) for d in queryset)
        self.message_user(request, f"Paused {n} dispatcher(s).", messages.SUCCESS)

    @admin.action(description="Test connection", permissions=["change"])
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Dispatcher]) -> None:
        for dispatcher in queryset:
            report = dispatcher_connection_test(dispatcher=dispatcher)
            level = {True: messages.SUCCESS, False: messages.ERROR, None: messages.INFO}[report.ok]
            self.message_user(request, f"{dispatcher.name}: {report.message}", level)

    @admin.action(description="Resume selected dispatchers", permissions=["pause"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Dispatcher]) -> None:
        n = sum(dispatcher_resume(dispatcher=d) for d in queryset)
        self.message_user(request, f"Resumed {n} dispatcher(s).", messages.SUCCESS)


class PoolMemberInline(admin.TabularInline):
    model = PoolMember
    extra = 1
    fields = ("dispatcher", "priority", "weight")
    autocomplete_fields = ()


@admin.register(DispatcherPool)
class DispatcherPoolAdmin(admin.ModelAdmin):
    list_display = ("name", "type", "member_count")
    readonly_fields = ("members_status",)
    fields = ("name", "type", "members_status")
    inlines = (PoolMemberInline,)

    @admin.display(description="members")
    def member_count(self, obj: DispatcherPool) -> int:
        return obj.members.count()

    @admin.display(description="members now")
    def members_status(self, obj: DispatcherPool) -> str:
        if not obj.pk:
            return "Shown once the pool is saved."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{} · {}</td><td>{} / {}</td><td>{}</td><td>{}</td>"
            '<td><span class="herald-badge herald-badge--{}">{}</span></td><td>{}</td>'
            "<td>{}</td></tr>",
            (
                (
                    s.member.dispatcher.name,
                    s.member.priority,
                    s.member.weight,
                    intcomma(s.sent_last_hour),
                    intcomma(s.member.dispatcher.messages_per_hour),
                    intcomma(s.budget),
                    f"{s.share:.0%}",  # format_html escapes to text first
                    "ok" if s.healthy else "failed",
                    s.health,
                    _failover(s.member),
                    _slowed_providers(s.member.dispatcher),
                )
                for s in pool_members_status(pool=obj)
            ),
        )
        return format_html(
            '<table class="herald-table"><thead><tr><th>Dispatcher</th>'
            "<th>Priority · weight</th>"
            "<th>Sent last hour / limit</th><th>Budget left</th><th>Share</th>"
            "<th>Health</th><th>Last failover</th><th>Providers slowed down</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )


def provider_rates_table(statuses: list[ProviderRateStatus]) -> str:
    """Each provider's configured and current rate, sent this minute and in
    the last hour, and its last slow-down with the server's own words."""
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                s.label,
                s.configured,
                _effective(s),
                s.sent_this_minute,
                s.sent_last_hour,
                _slowed(s),
            )
            for s in statuses
        ),
    )
    return format_html(
        '<table class="herald-table"><thead><tr><th>Provider</th><th>Rate (per minute)</th>'
        "<th>Now (per minute)</th><th>Sent this minute</th><th>Sent last hour</th>"
        "<th>Last slowed down</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


def _effective(status: ProviderRateStatus) -> str:
    if status.effective < status.configured:
        return format_html(
            '<span class="herald-badge herald-badge--failed">{}</span> slowed down',
            status.effective,
        )
    return str(status.effective)


def _slowed(status: ProviderRateStatus) -> str:
    if status.slowed_at is None:
        return "—"
    when = timezone.localtime(status.slowed_at).strftime("%Y-%m-%d %H:%M")
    return f"{when} ({status.refusals} refused): {status.reply}"


def _slowed_providers(dispatcher: Dispatcher) -> str:
    slowed = [
        f"{s.label}: {s.effective} of {s.configured} a minute ({s.reply})"
        for s in provider_rates_status(dispatcher=dispatcher)
        if s.effective < s.configured
    ]
    return "; ".join(slowed) or "—"


def _webhook_key_state(obj: Dispatcher, provider: providers.Provider) -> str:
    """What the provider signs its webhooks with, and whether Herald has it."""
    if obj.esp_provider == "amazon_ses":
        if obj.esp_sns_topic_arn:
            return f"Notifications of topic {obj.esp_sns_topic_arn} only, signed by Amazon SNS."
        return "Enter the SNS topic ARN below: until then every notification is refused."
    if obj.esp_provider == "unisender_go":
        return "Signature checked with the API key above."
    if not provider.webhook_key:
        return "This provider does not sign its webhooks (the secret in the URL is checked)."
    if obj.esp_webhook_key:
        return f"Signature checked with the stored webhook signing key ({provider.webhook_key})."
    if obj.esp_provider == "mailgun" and settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY:
        return "Signature checked with HERALD_MAILGUN_WEBHOOK_SIGNING_KEY from the environment."
    return (
        f"Enter the webhook signing key below, {provider.webhook_key}: until then every "
        "webhook is refused."
    )


def _failover(member: PoolMember) -> str:
    if member.last_failover_at is None:
        return "—"
    when = timezone.localtime(member.last_failover_at).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when}: {member.last_failover_reason}"


def aligned(from_domain: str, other: str) -> bool:
    """Relaxed DMARC alignment, approximated without the public suffix
    list: the same domain, or one a subdomain of the other."""
    return (
        other == from_domain
        or other.endswith(f".{from_domain}")
        or from_domain.endswith(f".{other}")
    )


def _badge(status: str, label: str) -> str:
    badge = {"ok": "ok", "failed": "failed"}.get(status, "paused")
    return format_html('<span class="herald-badge herald-badge--{}">{}</span>', badge, label)


@admin.register(SenderDomain)
class SenderDomainAdmin(admin.ModelAdmin):
    list_display = ("domain", "spf", "dkim", "dmarc", "checked_at", "verified_at", "archived")
    list_filter = ("archived", "spf_status", "dkim_status", "dmarc_status")
    search_fields = ("domain",)
    actions = ("verify", "new_key", "archive", "unarchive")
    readonly_fields = (
        "records",
        "spf",
        "dkim",
        "dmarc",
        "checked_at",
        "verified_at",
        "dkim_selector",
        "key_state",
        "archived",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "domain",
                    "dmarc_report_email",
                    "return_path_domain",
                    "return_path_host",
                    "archived",
                )
            },
        ),
        ("Records to publish", {"fields": ("records",)}),
        (
            "Status",
            {
                "fields": (
                    "spf",
                    "dkim",
                    "dmarc",
                    "checked_at",
                    "verified_at",
                    "dkim_selector",
                    "key_state",
                )
            },
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: SenderDomain | None = None) -> Any:
        # The domain names the key and every record: fixed once saved.
        fields = tuple(self.readonly_fields)
        return ("domain", *fields) if obj is not None else fields

    def _status(self, obj: SenderDomain, check: str) -> str:
        status = getattr(obj, f"{check}_status")
        reason = getattr(obj, f"{check}_reason")
        label = obj.Status(status).label
        return format_html('{} <span class="herald-sub">{}</span>', _badge(status, label), reason)

    @admin.display(description="SPF")
    def spf(self, obj: SenderDomain) -> str:
        return self._status(obj, "spf")

    @admin.display(description="DKIM")
    def dkim(self, obj: SenderDomain) -> str:
        return self._status(obj, "dkim")

    @admin.display(description="DMARC")
    def dmarc(self, obj: SenderDomain) -> str:
        return self._status(obj, "dmarc")

    @admin.display(description="signing key")
    def key_state(self, obj: SenderDomain) -> str:
        if not obj.pk:
            return "Made when the domain is saved."
        state = "signs outgoing mail" if obj.key_active else "signs once its DKIM record verifies"
        text = f"RSA 2048, selector {obj.dkim_selector}: {state}."
        if obj.pending_selector:
            text += (
                f" New key {obj.pending_selector} waits for its record to verify "
                f"({obj.pending_reason}); then it replaces the current key."
            )
        return text

    @admin.display(description="records")
    def records(self, obj: SenderDomain) -> str:
        if not obj.pk:
            return "Shown once the domain is saved (the DKIM key is made then)."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td>"
            '<td><code class="herald-record">{}</code></td></tr>',
            ((r.purpose, r.type, r.name, r.value) for r in sender_domain_records(domain=obj)),
        )
        return format_html(
            '<table class="herald-records"><thead><tr><th>For</th><th>Type</th><th>Name</th>'
            "<th>Value</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def save_model(self, request: HttpRequest, obj: SenderDomain, form: Any, change: bool) -> None:
        if not change:
            sender_domain_keys_fill(domain=obj)
        super().save_model(request, obj, form, change)

    def has_delete_permission(self, request: HttpRequest, obj: SenderDomain | None = None) -> bool:
        return False

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict | None = None
    ) -> HttpResponse:
        # Sender domains are history: what was sent from where stays readable.
        self.message_user(
            request,
            "Sender domains are never deleted; archive it instead (it stays listed).",
            messages.ERROR,
        )
        return HttpResponseRedirect(
            reverse("admin:dispatchers_senderdomain_change", args=[object_id])
        )

    @admin.action(description="Verify the DNS records now", permissions=["change"])
    def verify(self, request: HttpRequest, queryset: QuerySet[SenderDomain]) -> None:
        for domain in queryset.filter(archived=False):
            ok = sender_domain_verify(domain=domain)
            if ok:
                self.message_user(request, f"Sender domain {domain} verified.", messages.SUCCESS)
            else:
                self.message_user(
                    request,
                    f"Sender domain {domain} is not verified: {domain.problem}",
                    messages.WARNING,
                )

    @admin.action(description="Make a new DKIM key (rotation)", permissions=["change"])
    def new_key(self, request: HttpRequest, queryset: QuerySet[SenderDomain]) -> None:
        for domain in queryset.filter(archived=False):
            sender_domain_key_new(domain=domain)
            self.message_user(
                request,
                f"Sender domain {domain}: publish the record for selector "
                f"{domain.pending_selector}; it replaces the current key once it verifies.",
                messages.SUCCESS,
            )

    @admin.action(description="Archive selected domains", permissions=["change"])
    def archive(self, request: HttpRequest, queryset: QuerySet[SenderDomain]) -> None:
        n = sum(sender_domain_archive(domain=d) for d in queryset)
        self.message_user(request, f"Archived {n} domain(s).", messages.SUCCESS)

    @admin.action(description="Restore selected domains from the archive", permissions=["change"])
    def unarchive(self, request: HttpRequest, queryset: QuerySet[SenderDomain]) -> None:
        n = sum(sender_domain_unarchive(domain=d) for d in queryset)
        self.message_user(request, f"Restored {n} domain(s).", messages.SUCCESS)
