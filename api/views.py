"""The API's views: thin, each action checks its input and calls a service."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from kombu.exceptions import OperationalError
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from campaigns import lifecycle
from campaigns import services as campaign_services
from campaigns.audience import segment_count
from campaigns.messages import MessageBuildError, template_preview
from campaigns.models import (
    Campaign,
    CampaignItem,
    Contact,
    ContactList,
    Segment,
    Suppression,
    Template,
)
from campaigns.selectors import campaign_counts, campaign_progress
from campaigns.services import campaign_duplicate
from campaigns.sms import SmsBuildError, sms_preview
from dispatchers.models import Dispatcher
from jobs import services as job_services
from jobs.models import ON_DEMAND_ONLY, Job, JobRun

from . import serializers as s
from .exceptions import Conflict, Unavailable
from .services import (
    contact_lists_leave,
    contact_subscribe,
    contacts_upsert,
)


class AdminModelViewSet(viewsets.ModelViewSet):
    """A model's CRUD, with the admin's permissions for that model."""

    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    @property
    def permission_model(self) -> Any:
        return self.queryset.model  # type: ignore[union-attr]


class ContactFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=Contact.Status.choices, required=False)
    list = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
    email = serializers.CharField(required=False)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("status", enum=Contact.Status.values),
            OpenApiParameter("list", OpenApiTypes.INT, description="Subscribed to this list"),
            OpenApiParameter("email", OpenApiTypes.STR),
        ]
    )
)
class ContactViewSet(AdminModelViewSet):
    queryset = Contact.objects.prefetch_related("subscription_set")
    serializer_class = s.ContactSerializer
    action_permissions = {
        "bulk": ["campaigns.add_contact", "campaigns.change_contact"],
        "subscribe": ["campaigns.view_contact", "campaigns.add_subscription"],
        "unsubscribe": ["campaigns.view_contact", "campaigns.delete_subscription"],
    }

    def get_queryset(self) -> QuerySet[Contact]:
        queryset = super().get_queryset()
        if self.action != "list":
            return queryset
        filters = ContactFilter(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        if "status" in given:
            queryset = queryset.filter(status=given["status"])
        if "list" in given:
            queryset = queryset.filter(
                subscription__contact_list_id=given["list"],
                subscription__unsubscribed_at__isnull=True,
            )
        if "email" in given:
            queryset = queryset.filter(email=given["email"].strip().lower())
        return queryset

    @extend_schema(request=s.BulkUpsertDocSerializer, responses=s.BulkResultSerializer)
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        """Create or update up to 10,000 contacts by address; one result per
        row. With `list`, the contacts are also subscribed to it, except
        those who had unsubscribed from it (counted in kept_unsubscribed)."""
        payload = s.BulkUpsertSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        contact_list = payload.validated_data.get("list")
        if contact_list is not None and not request.user.has_perm("campaigns.add_subscription"):
            self.permission_denied(request, "Subscribing needs the add subscription permission.")
        results, kept_unsubscribed = contacts_upsert(
            rows=payload.validated_data["contacts"],
            contact_list=contact_list,
            source=payload.validated_data["source"],
        )
        counts = {key: sum(r.status == key for r in results) for key in s.BULK_STATUSES}
        body = {
            **counts,
            "kept_unsubscribed": kept_unsubscribed,
            "results": [r.__dict__ for r in results],
        }
        return Response(body, status=status.HTTP_200_OK)

    @extend_schema(request=s.ListsSerializer, responses=s.ContactSerializer)
    @action(detail=True, methods=["post"])
    def subscribe(self, request: Request, pk: str) -> Response:
        contact = self.get_object()
        payload = s.ListsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            contact_subscribe(
                contact=contact,
                lists=payload.validated_data["lists"],
                source=payload.validated_data["source"],
                resubscribe=payload.validated_data["resubscribe"],
            )
        except DjangoValidationError as exc:
            raise Conflict(exc.messages[0]) from None
        return Response(s.ContactSerializer(self.get_object()).data)

    @extend_schema(request=s.ListsSerializer, responses=s.ContactSerializer)
    @action(detail=True, methods=["post"])
    def unsubscribe(self, request: Request, pk: str) -> Response:
        contact = self.get_object()
        payload = s.ListsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        contact_lists_leave(contact=contact, lists=payload.validated_data["lists"])
        return Response(s.ContactSerializer(self.get_object()).data)


class ContactListViewSet(AdminModelViewSet):
    queryset = ContactList.objects.all()
    serializer_class = s.ContactListSerializer


class SegmentViewSet(AdminModelViewSet):
    queryset = Segment.objects.prefetch_related("lists", "not_lists")
    serializer_class = s.SegmentSerializer
    action_permissions = {"count": ["campaigns.view_segment", "campaigns.view_contact"]}

    @extend_schema(responses=s.CountSerializer)
    @action(detail=True, methods=["get"])
    def count(self, request: Request, pk: str) -> Response:
        """How many contacts the segment holds now."""
        return Response({"count": segment_count(segment=self.get_object())})


class SuppressionViewSet(AdminModelViewSet):
    queryset = Suppression.objects.all()
    serializer_class = s.SuppressionSerializer


class TemplateViewSet(AdminModelViewSet):
    queryset = Template.objects.all()
    serializer_class = s.TemplateSerializer
    action_permissions = {"preview": ["campaigns.view_template", "campaigns.view_contact"]}

    @extend_schema(request=s.PreviewRequestSerializer, responses=s.PreviewSerializer)
    @action(detail=True, methods=["post"])
    def preview(self, request: Request, pk: str) -> Response:
        """The template rendered for one contact, as it would be sent."""
        template = self.get_object()
        payload = s.PreviewRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        contact = payload.validated_data["contact"]
        try:
            preview = template_preview(template=template, contact=contact)
            sms = sms_preview(template=template, contact=contact) if template.sms_body else None
        except (MessageBuildError, SmsBuildError) as exc:
            raise serializers.ValidationError({"template": [str(exc)]}) from None
        sms_fields = (
            {"text": sms.text, "encoding": sms.encoding, "segments": sms.segments} if sms else None
        )
        return Response({**preview.__dict__, "sms": sms_fields})


class CampaignViewSet(AdminModelViewSet):
    queryset = Campaign.objects.select_related("template", "dispatcher").prefetch_related(
        "lists", "segments", "exclude_lists", "exclude_segments"
    )
    serializer_class = s.CampaignSerializer
    # Campaigns that have sent keep their history; a draft is deleted in
    # the admin, where the cascade is shown first.
    http_method_names = ["get", "post", "put", "patch", "head", "options"]
    action_permissions = {
        # As the admin's "schedule" action: changing the campaign.
        "schedule": ["campaigns.change_campaign"],
        "pause": ["campaigns.pause_campaign"],
        "resume": ["campaigns.pause_campaign"],
        "duplicate": ["campaigns.add_campaign"],
        "cancel": ["campaigns.change_campaign"],
        "unschedule": ["campaigns.change_campaign"],
        "progress": ["campaigns.view_campaign"],
        "recipients": ["campaigns.view_campaign", "campaigns.view_campaignitem"],
    }

    def perform_create(self, serializer: Any) -> None:
        serializer.save(created_by=self.request.user)

    def perform_update(self, serializer: Any) -> None:
        if serializer.instance.status != Campaign.Status.DRAFT:
            raise Conflict(
                f"Only a draft can be changed; this one is {serializer.instance.status}."
            )
        serializer.save()

    @extend_schema(request=s.ScheduleSerializer, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"])
    def schedule(self, request: Request, pk: str) -> Response:
        campaign = self.get_object()
        payload = s.ScheduleSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        if campaign.status != Campaign.Status.DRAFT:
            raise Conflict(f"Only a draft can be scheduled; this one is {campaign.status}.")
        when = payload.validated_data.get("scheduled_at")
        campaign_services.campaign_schedule(campaign=campaign, when=when)
        return Response(s.CampaignSerializer(self.get_object()).data)

    @extend_schema(request=s.ReasonSerializer, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        campaign = self.get_object()
        payload = s.ReasonSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        reason = payload.validated_data["reason"] or f"Paused by {request.user.get_username()}"
        if not campaign_services.campaign_pause(campaign=campaign, reason=reason):
            raise Conflict(
                f"Only a scheduled or sending campaign pauses; this one is {campaign.status}."
            )
        return Response(s.CampaignSerializer(self.get_object()).data)

    @extend_schema(request=None, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        campaign = self.get_object()
        if not campaign_services.campaign_resume(campaign=campaign):
            raise Conflict(f"Only a paused campaign resumes; this one is {campaign.status}.")
        return Response(s.CampaignSerializer(self.get_object()).data)

    @extend_schema(request=None, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Stop for good: no further message leaves."""
        return self._lifecycle(lifecycle.campaign_cancel)

    @extend_schema(request=None, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"])
    def unschedule(self, request: Request, pk: str) -> Response:
        """Back to draft, before it starts."""
        return self._lifecycle(lifecycle.campaign_unschedule)

    def _lifecycle(self, move: Any) -> Response:
        try:
            move(campaign=self.get_object())
        except DjangoValidationError as exc:
            raise Conflict(exc.messages[0]) from None
        return Response(s.CampaignSerializer(self.get_object()).data)

    @extend_schema(request=None, responses={201: s.CampaignSerializer})
    @action(detail=True, methods=["post"])
    def duplicate(self, request: Request, pk: str) -> Response:
        copy = campaign_duplicate(campaign=self.get_object(), user=request.user)
        return Response(s.CampaignSerializer(copy).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=s.ProgressSerializer)
    @action(detail=True, methods=["get"])
    def progress(self, request: Request, pk: str) -> Response:
        campaign = self.get_object()
        progress = campaign_progress(campaign=campaign)
        body = {
            "status": campaign.status,
            **progress.__dict__,
            "done": progress.done,
            "percent": progress.percent,
            "by_status": campaign_counts(campaign_id=campaign.pk),
        }
        return Response(body)

    @extend_schema(responses=s.CampaignItemSerializer(many=True))
    @action(detail=True, methods=["get"])
    def recipients(self, request: Request, pk: str) -> Response:
        campaign = self.get_object()
        items = CampaignItem.objects.filter(campaign=campaign).select_related("contact")
        page = self.paginate_queryset(items)
        data = s.CampaignItemSerializer(page, many=True).data
        return self.get_paginated_response(data)


class DispatcherViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Dispatcher.objects.all()
    serializer_class = s.DispatcherSerializer
    permission_model = Dispatcher
    action_permissions = {
        "pause": ["dispatchers.view_dispatcher", "dispatchers.pause_dispatcher"],
        "resume": ["dispatchers.view_dispatcher", "dispatchers.pause_dispatcher"],
    }

    @extend_schema(request=s.ReasonSerializer, responses=s.DispatcherSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        dispatcher = self.get_object()
        payload = s.ReasonSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        # The job manager's service: the pause is audited as one by hand.
        paused = job_services.dispatcher_pause_by_hand(
            dispatcher_id=dispatcher.pk, user=request.user, reason=payload.validated_data["reason"]
        )
        if not paused:
            raise Conflict(f"{dispatcher.name} is already paused.")
        return Response(s.DispatcherSerializer(self.get_object()).data)

    @extend_schema(request=None, responses=s.DispatcherSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        dispatcher = self.get_object()
        if not job_services.dispatcher_resume_by_hand(
            dispatcher_id=dispatcher.pk, user=request.user
        ):
            raise Conflict(f"{dispatcher.name} is not paused.")
        return Response(s.DispatcherSerializer(self.get_object()).data)


class JobRunViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = JobRun.objects.all()
    serializer_class = s.JobRunSerializer
    permission_model = JobRun


def _job_body(job: Job) -> dict[str, Any]:
    return {
        "key": job.name.lower(),
        "task": job.value,
        "label": job.label,
        "runs_by_hand": job not in ON_DEMAND_ONLY,
    }


class JobViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The jobs the job manager lists; `run` sends one to the workers now."""

    serializer_class = s.JobSerializer
    permission_model = JobRun
    pagination_class = None
    lookup_field = "key"
    lookup_value_regex = "[a-z_]+"
    action_permissions = {"run": ["jobs.view_jobrun", "jobs.run_job"]}

    def list(self, request: Request) -> Response:
        return Response([_job_body(job) for job in Job])

    @extend_schema(request=None, responses={202: s.JobActionSerializer})
    @action(detail=True, methods=["post"])
    def run(self, request: Request, key: str) -> Response:
        try:
            job = Job[key.upper()]
        except KeyError:
            raise NotFound(f"No job {key!r}.") from None
        try:
            done = job_services.job_run_now(job=job, user=request.user)
        except OperationalError as exc:
            raise Unavailable(f"{job.label} was not sent: the broker is unreachable.") from exc
        body = {"action": done.action, "target": done.target, "at": done.at}
        return Response(body, status=status.HTTP_202_ACCEPTED)
