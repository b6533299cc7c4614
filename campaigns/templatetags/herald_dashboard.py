"""``{% herald_dashboard %}``: the dashboard block of the admin home page."""

from __future__ import annotations

from typing import Any

from django import template

from campaigns.dashboard import dashboard_for

register = template.Library()


@register.inclusion_tag("admin/herald/dashboard.html", takes_context=True)
def herald_dashboard(context: template.Context) -> dict[str, Any]:
    return {"dashboard": dashboard_for(user=context["request"].user), "perms": context["perms"]}
