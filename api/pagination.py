from rest_framework.pagination import CursorPagination


class IdCursorPagination(CursorPagination):
    """Pages that stay right while rows are added: keyed on the id."""

    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000
