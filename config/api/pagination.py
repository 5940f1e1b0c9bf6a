from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination, PageNumberPagination

from config.errors import ApplicationError


class PageSizeInvalid(ApplicationError):
    code = "page_size_invalid"


class StrictPageSize:
    """`page_size` as the schema publishes it (a whole number from 1 to max_page_size): anything
    else is a 400 with a sentence. DRF's own pagination quietly used its default instead, so a
    client asking for `page_size=500` or `page_size=ten` got 50 rows and no word why."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
        if not 1 <= size <= self.max_page_size:
            raise PageSizeInvalid(
                f"page_size must be a whole number from 1 to {self.max_page_size}.",
                {"field": self.page_size_query_param, "max": self.max_page_size},
            )
        return size

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters


class Pagination(StrictPageSize, PageNumberPagination):
    def get_page_number(self, request, paginator):
        # An empty `page` is checked like any other value (DRF took it as the first page).
        if request.query_params.get(self.page_query_param) == "":
            raise NotFound(self.invalid_page_message.format(page_number="", message="a page number is required"))
        return super().get_page_number(request, paginator)


class StrictCursorPagination(StrictPageSize, CursorPagination):
    def decode_cursor(self, request):
        # An empty `cursor` is checked like any other value (DRF took it as no position at all).
        if request.query_params.get(self.cursor_query_param) == "":
            raise NotFound(self.invalid_cursor_message)
        return super().decode_cursor(request)
