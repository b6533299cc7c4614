"""Unauthenticated monitoring endpoints (health, readiness, metrics)."""

from django.urls import path

from . import monitoring

urlpatterns = [
    path("healthz", monitoring.healthz, name="healthz"),
    path("readyz", monitoring.readyz, name="readyz"),
    path("metrics", monitoring.metrics, name="metrics"),
    path("troubleshooting", monitoring.troubleshooting, name="troubleshooting"),
]
