"""The analytics REST API (/api/v1/): each view parses input, calls one service, renders output."""

import json
import math
from datetime import date, timedelta

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import selectors, services
from analytics.errors import UsageQueryInvalid
from config.api.errors import error_responses
from config.api.inputs import StringField, validated_query
from config.errors import ApplicationError

# --- Product events ----------------------------------------------------------------

EVENTS_MAX = 100
EVENT_PROPERTIES_MAX_BYTES = 8 * 1024
EVENT_MAX_AGE = timedelta(days=7)
EVENT_MAX_AHEAD = timedelta(minutes=5)


def _unstorable(value) -> str | None:
    """Why PostgreSQL would refuse this parsed JSON (it stores no NUL and no unpaired surrogate), else None."""
    stack = [value]
    while stack:  # a loop, not recursion: nesting depth is bounded elsewhere
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "Contains a NUL character (\\u0000), which cannot be stored."
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "Contains an unpaired surrogate (invalid Unicode), which cannot be stored."
        elif isinstance(item, float) and not math.isfinite(item):
            return "Contains NaN or Infinity, which cannot be stored."
    return None


class RegexStringField(StringField, serializers.RegexField):
    """Text matching a pattern, as a JSON string only (config/api/inputs.StringField)."""


@extend_schema_field({"type": "object", "additionalProperties": {}})
class JSONObjectField(serializers.JSONField):
    """Any JSON object: `properties` takes nothing else (a 400 or a rejected event says so)."""


class EventIn(serializers.Serializer):
    name = RegexStringField(
        r"^[A-Za-z0-9_.:/\- ]+$", max_length=100, error_messages={"invalid": "Use letters, digits, spaces and _ . : / - only."}
    )
    properties = JSONObjectField(required=False, default=dict, help_text="A JSON object, 8 KB at most.")
    occurred_at = serializers.DateTimeField(
        required=False, help_text="When it happened (ISO 8601); default now. At most 5 minutes ahead and 7 days old."
    )
    session_id = StringField(required=False, allow_blank=True, max_length=64, default="")

    def validate_properties(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        if len(json.dumps(value, separators=(",", ":"))) > EVENT_PROPERTIES_MAX_BYTES:
            raise serializers.ValidationError(f"Must be {EVENT_PROPERTIES_MAX_BYTES // 1024} KB of JSON at most.")
        if reason := _unstorable(value):
            raise serializers.ValidationError(reason)
        return value

    def validate_session_id(self, value):
        if reason := _unstorable(value):
            raise serializers.ValidationError(reason)
        return value

    def validate_occurred_at(self, value):
        now = timezone.now()
        if value > now + EVENT_MAX_AHEAD:
            raise serializers.ValidationError("Is in the future (more than 5 minutes ahead of the server clock).")
        if value < now - EVENT_MAX_AGE:
            raise serializers.ValidationError("Is older than 7 days; such events are not accepted.")
        return value


class EventBatchIn(serializers.Serializer):
    # A list field (not EventIn(many=True)) so that the schema publishes its bounds, which the view checks.
    events = serializers.ListField(
        child=EventIn(), min_length=1, max_length=EVENTS_MAX, help_text=f"1 to {EVENTS_MAX} events; each is validated on its own."
    )


class EventRejectedOut(serializers.Serializer):
    index = serializers.IntegerField(help_text="The event's position in `events`, from 0.")
    errors = serializers.DictField(help_text="Field name to a list of messages.")


class EventBatchOut(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Events kept (0 when the user opted out of analytics).")
    rejected = EventRejectedOut(many=True)


class EventBatchApi(APIView):
    """Product analytics events from clients, queued and written off the request path."""

    # No events scope exists: an API key needs account:write (browser sessions need no scope).
    required_scopes = "account:write"

    @extend_schema(
        operation_id="events_track",
        summary="Track product events",
        description=(
            f"Send up to {EVENTS_MAX} events at once. Each event is validated in full before any is queued: "
            "`accepted` counts exactly the events that will be stored; "
            "invalid ones are listed under `rejected` with their index and errors (202). If none is valid, "
            "the answer is 400 with the same list under `extra.rejected`. For a user who opted out of "
            "analytics nothing is kept (`accepted` is 0). API keys need the `account:write` scope."
        ),
        request=EventBatchIn,
        responses={202: EventBatchOut, **error_responses(400, 401, 403)},
        examples=[
            OpenApiExample(
                "Two events",
                request_only=True,
                value={
                    "events": [
                        {"name": "page_view", "properties": {"path": "/chat"}},
                        {
                            "name": "button_click",
                            "properties": {"id": "new-chat"},
                            "occurred_at": "2026-01-01T12:00:00Z",
                            "session_id": "s-1",
                        },
                    ]
                },
            )
        ],
    )
    def post(self, request):
        events = request.data.get("events") if isinstance(request.data, dict) else None
        if not isinstance(events, list) or not events:
            raise ApplicationError("Send a JSON object with a non-empty `events` list.", {"field": "events"})
        if len(events) > EVENTS_MAX:
            raise ApplicationError(
                f"Send at most {EVENTS_MAX} events per request; this one has {len(events)}.", {"field": "events", "max": EVENTS_MAX}
            )
        valid, rejected = [], []
        for index, item in enumerate(events):
            serializer = EventIn(data=item)
            if serializer.is_valid():
                valid.append(serializer.validated_data)
            else:
                rejected.append({"index": index, "errors": serializer.errors})
        if not valid:
            raise ApplicationError(f"None of the {len(events)} events is valid; see extra.rejected.", {"rejected": rejected})
        accepted = services.event_track_batch(user=request.user, events=valid)
        return Response(EventBatchOut({"accepted": accepted, "rejected": rejected}).data, status=status.HTTP_202_ACCEPTED)


# --- Usage -------------------------------------------------------------------------
# Read from the rollups (exact daily and monthly totals, updated every minute), in UTC days.

USAGE_READ = "usage:read"


class UsageSummaryIn(serializers.Serializer):
    period = serializers.ChoiceField(
        choices=selectors.PERIODS,
        default="month",
        error_messages={"invalid_choice": "'{input}' is not a period: use day, week, month or 30d."},
    )


class UsageDailyIn(serializers.Serializer):
    to = serializers.DateField(required=False, error_messages={"invalid": "Give the date as YYYY-MM-DD."})
    group_by = serializers.ChoiceField(
        choices=selectors.GROUPINGS,
        default="model",
        error_messages={"invalid_choice": "'{input}' is not a grouping: use model, provider or user."},
    )
    organization = serializers.UUIDField(required=False, error_messages={"invalid": "Give the organization's id (a UUID)."})

    def get_fields(self):
        fields = super().get_fields()
        # `from` is a Python keyword: the field is added here rather than declared above.
        fields["from"] = serializers.DateField(required=False, error_messages={"invalid": "Give the date as YYYY-MM-DD."})
        return fields


class UsageTotalsOut(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    calls = serializers.IntegerField(help_text="Model calls (messages answered), failed ones included.")
    errors = serializers.IntegerField(help_text="Model calls that failed.")
    cost = serializers.DecimalField(max_digits=24, decimal_places=10, help_text="USD, exact to 10 places, as a string.")


class UsageSummaryOut(UsageTotalsOut):
    period = serializers.ChoiceField(choices=selectors.PERIODS)
    period_start = serializers.DateField(help_text="First day of the period (UTC).")
    period_end = serializers.DateField(help_text="Last day of the period (UTC): today.")


class UsageDailyRowOut(UsageTotalsOut):
    date = serializers.DateField(help_text="The day (UTC).")
    key = serializers.CharField(help_text="The model, the provider, or the member's user id.")
    label = serializers.CharField(help_text="How to show the key: the model, the provider, or the member's name.")


class UsageSummaryApi(APIView):
    """The signed-in user's own usage over a period."""

    required_scopes = USAGE_READ

    @extend_schema(
        operation_id="usage_summary",
        summary="Usage totals for a period",
        description="Your own tokens, calls, errors and cost over the period ending today (UTC). API keys need the `usage:read` scope.",
        parameters=[
            OpenApiParameter(
                "period",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                enum=list(selectors.PERIODS),
                default="month",
                description="`day`: today; `week`: since Monday; `month`: since the 1st; `30d`: the last 30 days, today included.",
            )
        ],
        responses={200: UsageSummaryOut, **error_responses(400, 401, 403)},
    )
    def get(self, request):
        params = validated_query(UsageSummaryIn, request)
        return Response(UsageSummaryOut(selectors.usage_summary(user=request.user, period=params["period"])).data)


class UsageDailyApi(APIView):
    """Usage day by day, per model, provider or member."""

    required_scopes = USAGE_READ

    @extend_schema(
        operation_id="usage_daily",
        summary="Daily usage",
        description=(
            "One row per day and key; days without usage are left out. `group_by=model` or `provider`: your own "
            "usage. `group_by=user`: usage by member of the organizations you own or administer (or the one named "
            f"by `organization`); others get 403. At most {selectors.MAX_RANGE_DAYS} days per request. "
            "API keys need the `usage:read` scope."
        ),
        parameters=[
            OpenApiParameter(
                "from",
                OpenApiTypes.DATE,
                OpenApiParameter.QUERY,
                description=f"First day, YYYY-MM-DD (UTC); default 29 days before `to`. "
                f"From `from` to `to` is at most {selectors.MAX_RANGE_DAYS} days (a 400 otherwise).",
            ),
            OpenApiParameter("to", OpenApiTypes.DATE, OpenApiParameter.QUERY, description="Last day, YYYY-MM-DD (UTC); default today."),
            OpenApiParameter(
                "group_by",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                enum=list(selectors.GROUPINGS),
                default="model",
                description="What each row is about: a model, a provider, or a member (`user`).",
            ),
            OpenApiParameter(
                "organization",
                OpenApiTypes.UUID,
                OpenApiParameter.QUERY,
                description="Only this organization's usage (for `group_by=user`: one you own or administer).",
            ),
        ],
        responses={200: UsageDailyRowOut(many=True), **error_responses(400, 401, 403)},
    )
    def get(self, request):
        params = validated_query(UsageDailyIn, request)
        end = params.get("to") or selectors.usage_today()
        if params.get("from") is None and (end - date.min).days < selectors.DAILY_CHART_DAYS - 1:
            raise UsageQueryInvalid(
                f"Without 'from', 'to' must be at least {selectors.DAILY_CHART_DAYS} days into the year 1.", {"field": "to"}
            )
        start = params.get("from") or end - timedelta(days=selectors.DAILY_CHART_DAYS - 1)
        rows = selectors.usage_daily(
            user=request.user, start=start, end=end, group_by=params["group_by"], organization_id=params.get("organization")
        )
        return Response(UsageDailyRowOut(rows, many=True).data)
