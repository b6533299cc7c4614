from django.urls import path

from . import import_views as views

# Included from campaigns/urls.py, so the names live in the "campaigns"
# namespace: {% url "campaigns:contact_import" %}.
urlpatterns = [
    path("contacts/import/", views.contact_import, name="contact_import"),
    path("contacts/export.csv", views.contact_export, name="contact_export"),
    path("suppressions/import/", views.suppression_import, name="suppression_import"),
    path("suppressions/export.csv", views.suppression_export, name="suppression_export"),
    path("imports/<int:pk>/", views.import_detail, name="import_detail"),
    path("imports/<int:pk>/progress/", views.import_progress, name="import_progress"),
    path("imports/<int:pk>/rejected.csv", views.import_report, name="import_report"),
]
