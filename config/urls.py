from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "Herald"
admin.site.site_title = "Herald"
admin.site.index_title = "Campaigns, dispatchers and jobs"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("jobs/", include("jobs.urls")),
    path("smtp/", include("smtpservers.urls")),
    path("webhooks/", include("bounces.urls")),
    path("api/", include("api.urls")),
    path("", include("jobs.monitoring_urls")),
    path("", include("campaigns.urls")),
    path("admin/", admin.site.urls),
]
