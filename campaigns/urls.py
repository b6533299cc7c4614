from django.urls import include, path

from . import views

app_name = "campaigns"
urlpatterns = [
    path("u/<str:signed>/", views.unsubscribe, name="unsubscribe"),
    path("", include("campaigns.import_urls")),
    path("", include("campaigns.campaign_urls")),
]
