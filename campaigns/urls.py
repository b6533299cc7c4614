from django.urls import include, path

from . import sms_views, views

app_name = "campaigns"
urlpatterns = [
    path("u/<str:signed>/", views.unsubscribe, name="unsubscribe"),
    path("sms/status/<int:dispatcher_id>/", sms_views.twilio_status, name="twilio_status"),
    path("", include("campaigns.import_urls")),
]
