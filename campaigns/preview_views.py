"""The preview page of a template (or of a campaign's template): pick a
contact, read the subject, the HTML in a sandboxed frame, the text and the
SMS with its segment count; test send to a few addresses."""

from __future__ import annotations

import re

from django import forms
from django.contrib import admin
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.http import urlencode

from dispatchers.models import Dispatcher

from . import preview
from .messages import MessageBuildError, template_preview
from .models import Campaign, Contact, Template

TABS = ("html", "text", "sms")

# The page itself runs only our own static scripts; the frame that shows
# the marketer's HTML inherits this policy (srcdoc), is sandboxed with no
# permission at all, and carries its own meta policy: three locks on the
# same door, so a <script> in a template never runs in Herald's origin.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src * data:; font-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'self'"
)
FRAME_CSP_META = (
    '<meta http-equiv="Content-Security-Policy" content="script-src \'none\'; '
    "object-src 'none'; base-uri 'none'; form-action 'none'\">"
)


class TestSendForm(forms.Form):
    recipients = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 40}),
        help_text=f"Up to {preview.TEST_SEND_MAX} addresses, one per line or separated by commas.",
    )
    dispatcher = forms.ModelChoiceField(
        Dispatcher.objects.filter(type=Dispatcher.Type.EMAIL).order_by("name"),
        empty_label=None,
    )

    def addresses(self) -> list[str]:
        # Lines (as browsers send them, CRLF) and commas separate addresses;
        # a stray CR left inside an entry is refused by the service.
        return [a for a in re.split(r"[,;]|\r?\n", self.cleaned_data["recipients"]) if a.strip()]


def _contact(request: HttpRequest) -> Contact:
    contact_id = request.GET.get("contact") or request.POST.get("contact")
    if contact_id and contact_id.isdigit():
        found = Contact.objects.filter(pk=int(contact_id)).first()
        if found is not None:
            return found
    return preview.sample_contact()


def _page(
    request: HttpRequest,
    template: Template,
    campaign: Campaign | None,
    form: TestSendForm,
    results: list[preview.RecipientResult] | None = None,
    status: int = 200,
) -> HttpResponse:
    contact = _contact(request)
    tab = request.GET.get("tab", "html")
    tab = tab if tab in TABS else "html"
    error = ""
    try:
        message = template_preview(template=template, contact=contact)
    except MessageBuildError as exc:
        message, error = None, str(exc)
    query = request.GET.get("q", "")
    keep = {k: v for k, v in {"contact": contact.pk or "", "q": query}.items() if v}
    context = {
        **admin.site.each_context(request),
        "title": f"Preview: {template.name}",
        "template": template,
        "campaign": campaign,
        "contact": contact,
        "contacts": preview.contacts_search(query=query),
        "query": query,
        "keep": urlencode(keep),
        "tab": tab,
        "message": message,
        "error": error,
        "frame_html": FRAME_CSP_META + (message.html or "") if message else "",
        "sms": preview.sms_preview(template=template, contact=contact),
        "form": form,
        "results": results,
        "can_send": request.user.has_perm("campaigns.change_template"),
    }
    response = render(request, "campaigns/preview.html", context, status=status)
    response["Content-Security-Policy"] = PAGE_CSP
    return response


def _preview(request: HttpRequest, template: Template, campaign: Campaign | None) -> HttpResponse:
    initial = {"dispatcher": campaign.dispatcher_id} if campaign else {}
    if request.method != "POST":
        return _page(request, template, campaign, TestSendForm(initial=initial))
    if not request.user.has_perm("campaigns.change_template"):
        return _page(request, template, campaign, TestSendForm(initial=initial), status=403)
    form = TestSendForm(request.POST)
    if campaign is not None:
        form.fields["dispatcher"].queryset = Dispatcher.objects.filter(pk=campaign.dispatcher_id)
    if not form.is_valid():
        return _page(request, template, campaign, form, status=400)
    try:
        results = preview.template_test_send(
            template=template,
            contact=_contact(request),
            dispatcher=form.cleaned_data["dispatcher"],
            recipients=form.addresses(),
            user=request.user,
        )
    except ValidationError as exc:
        form.add_error("recipients", exc)
        return _page(request, template, campaign, form, status=400)
    return _page(request, template, campaign, form, results=results)


@login_required
@permission_required("campaigns.view_template", raise_exception=True)
def template_preview_page(request: HttpRequest, pk: int) -> HttpResponse:
    return _preview(request, get_object_or_404(Template, pk=pk), None)


@login_required
@permission_required("campaigns.view_template", raise_exception=True)
def campaign_preview_page(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = get_object_or_404(Campaign.objects.select_related("template", "dispatcher"), pk=pk)
    return _preview(request, campaign.template, campaign)
