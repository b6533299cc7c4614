from django import template

from jobs.selectors import notifications_open_count

register = template.Library()


@register.simple_tag
def open_notifications_count() -> int:
    return notifications_open_count()
