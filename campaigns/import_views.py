"""Pages for CSV import (upload, column mapping, progress, report) and the
CSV exports of contacts and suppressions."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from . import exports, imports
from .models import Contact, ContactList, ImportJob, Suppression

_ADD_PERMISSION = {
    ImportJob.Kind.CONTACTS: "campaigns.add_contact",
    ImportJob.Kind.SUPPRESSIONS: "campaigns.add_suppression",
}
_CHANGELIST = {
    ImportJob.Kind.CONTACTS: "admin:campaigns_contact_changelist",
    ImportJob.Kind.SUPPRESSIONS: "admin:campaigns_suppression_changelist",
}


class UploadForm(forms.Form):
    file = forms.FileField(label="CSV file", help_text="UTF-8, the first row naming the columns.")


class MappingForm(forms.Form):
    """One select (and an attribute name) per column of the file."""

    def __init__(self, *args: Any, job: ImportJob, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job = job
        guess = job.mapping or imports.import_mapping_guess(job=job)
        choices = imports.import_fields(job.kind)
        for i, header in enumerate(job.headers):
            self.fields[f"field_{i}"] = forms.ChoiceField(
                label=header, choices=choices, initial=guess[i]["field"]
            )
            self.fields[f"name_{i}"] = forms.CharField(
                label=f"{header}: attribute name",
                required=False,
                max_length=64,
                initial=guess[i]["name"],
            )
        if job.kind == ImportJob.Kind.CONTACTS:
            self.fields["contact_list"] = forms.ModelChoiceField(
                ContactList.objects.all(),
                required=False,
                empty_label="No list (contacts only)",
                label="Add to list",
            )
            self.fields["source"] = forms.CharField(
                required=False,
                max_length=100,
                label="Source of consent",
                help_text="Recorded on new contacts and subscriptions, e.g. “Trade fair "
                "sign-up sheet, May 2025”. Empty: the file name.",
            )

    def columns(self) -> list[dict[str, Any]]:
        samples = imports.import_preview(job=self.job)
        return [
            {
                "header": header,
                "samples": [row[i] if i < len(row) else "" for row in samples],
                "field": self[f"field_{i}"],
                "name": self[f"name_{i}"],
            }
            for i, header in enumerate(self.job.headers)
        ]

    def mapping(self) -> list[dict[str, str]]:
        return [
            {"field": self.cleaned_data[f"field_{i}"], "name": self.cleaned_data[f"name_{i}"]}
            for i in range(len(self.job.headers))
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not self.errors:
            try:
                imports.import_mapping_check(kind=self.job.kind, mapping=self.mapping())
            except ValidationError as exc:
                raise forms.ValidationError(exc.messages) from None
        return cleaned


def _context(request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
    return {**admin.site.each_context(request), "title": title, **extra}


def _upload(request: HttpRequest, kind: str, title: str) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                job = imports.import_upload(
                    kind=kind, uploaded=form.cleaned_data["file"], user=request.user
                )
            except ValidationError as exc:
                form.add_error("file", exc)
            else:
                return redirect("campaigns:import_detail", pk=job.pk)
        status = 400
    recent = ImportJob.objects.filter(kind=kind).exclude(status=ImportJob.Status.UPLOADED)[:10]
    context = _context(
        request, title, form=form, kind=kind, recent=recent, changelist=_CHANGELIST[kind]
    )
    return render(request, "campaigns/import_upload.html", context, status=status)


@login_required
@permission_required("campaigns.add_contact", raise_exception=True)
def contact_import(request: HttpRequest) -> HttpResponse:
    return _upload(request, ImportJob.Kind.CONTACTS, "Import contacts")


@login_required
@permission_required("campaigns.add_suppression", raise_exception=True)
def suppression_import(request: HttpRequest) -> HttpResponse:
    return _upload(request, ImportJob.Kind.SUPPRESSIONS, "Import suppressions")


def _job(request: HttpRequest, pk: int) -> ImportJob:
    job = get_object_or_404(ImportJob, pk=pk)
    if not request.user.has_perm(_ADD_PERMISSION[ImportJob.Kind(job.kind)]):
        raise PermissionDenied
    return job


@login_required
def import_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job(request, pk)
    if job.status != ImportJob.Status.UPLOADED:
        return _progress_page(request, job)
    form = MappingForm(request.POST or None, job=job)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                imports.import_start(
                    job=job,
                    mapping=form.mapping(),
                    contact_list=form.cleaned_data.get("contact_list"),
                    source=form.cleaned_data.get("source", ""),
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                return redirect("campaigns:import_detail", pk=job.pk)
        status = 400
    context = _context(
        request,
        f"Map the columns of {job.original_name}",
        job=job,
        form=form,
        columns=form.columns(),
        changelist=_CHANGELIST[ImportJob.Kind(job.kind)],
    )
    return render(request, "campaigns/import_mapping.html", context, status=status)


def _progress_page(request: HttpRequest, job: ImportJob) -> HttpResponse:
    finished = job.status in (ImportJob.Status.DONE, ImportJob.Status.FAILED)
    context = _context(
        request,
        f"Import of {job.original_name}",
        job=job,
        finished=finished,
        rejections=imports.import_report_rows(job=job) if job.rejected else [],
        changelist=_CHANGELIST[ImportJob.Kind(job.kind)],
    )
    return render(request, "campaigns/import_progress.html", context)


@require_GET
@login_required
def import_progress(request: HttpRequest, pk: int) -> JsonResponse:
    job = _job(request, pk)
    return JsonResponse(
        {
            "status": job.status,
            "status_label": job.get_status_display(),
            "percent": job.percent,
            "rows_read": job.rows_read,
            "imported": job.imported,
            "created": job.created,
            "updated": job.updated,
            "kept_unsubscribed": job.kept_unsubscribed,
            "rejected": job.rejected,
            "error": job.error,
        }
    )


@require_GET
@login_required
def import_report(request: HttpRequest, pk: int) -> FileResponse:
    job = _job(request, pk)
    path = imports.report_path(job)
    if not path.exists():
        raise Http404("This import has no report yet.")
    stem = job.original_name.rsplit(".", 1)[0] or "import"
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"{stem}-rejected.csv",
        content_type="text/csv; charset=utf-8",
    )


def _csv_response(lines: Any, name: str) -> StreamingHttpResponse:
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@login_required
@permission_required("campaigns.view_contact", raise_exception=True)
def contact_export(request: HttpRequest) -> StreamingHttpResponse:
    contacts = Contact.objects.all()
    list_id = request.GET.get("list", "")
    if list_id:
        if not list_id.isdigit():
            raise Http404("No such list.")
        contacts = contacts.filter(
            subscription__contact_list_id=int(list_id), subscription__unsubscribed_at=None
        )
    status = request.GET.get("status", "")
    if status:
        if status not in Contact.Status.values:
            raise Http404("No such status.")
        contacts = contacts.filter(status=status)
    rows = exports.contacts_export_rows(contacts=contacts)
    return _csv_response(exports.csv_lines(rows), "contacts")


@require_GET
@login_required
@permission_required("campaigns.view_suppression", raise_exception=True)
def suppression_export(request: HttpRequest) -> StreamingHttpResponse:
    rows = exports.suppressions_export_rows(suppressions=Suppression.objects.all())
    return _csv_response(exports.csv_lines(rows), "suppressions")
