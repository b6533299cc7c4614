from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from . import views
from .exceptions import not_found

router = SimpleRouter(trailing_slash=True)
router.register("contacts", views.ContactViewSet)
router.register("lists", views.ContactListViewSet)
router.register("segments", views.SegmentViewSet)
router.register("suppressions", views.SuppressionViewSet)
router.register("templates", views.TemplateViewSet)
router.register("campaigns", views.CampaignViewSet)
router.register("dispatchers", views.DispatcherViewSet)
router.register("jobs", views.JobViewSet, basename="job")
router.register("job-runs", views.JobRunViewSet)

app_name = "api"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("v1/", include(router.urls)),
    re_path(r"^.*$", not_found),
]
