import itertools
import uuid
from decimal import Decimal

from accounts.models import Membership
from accounts.tests.factories import make_user

_seq = itertools.count(1)


def make_member():
    """A user and their personal organization id."""
    user = make_user()
    organization_id = Membership.objects.using("privileged").get(user=user).organization_id
    return user, organization_id


def usage_fields(user, organization_id, **overrides):
    n = next(_seq)
    fields = {
        "user_id": user.pk,
        "organization_id": organization_id,
        "provider": "openai",
        "model": "gpt-test",
        "input_tokens": 100 + n % 7,
        "output_tokens": 50 + n % 11,
        "input_price": Decimal("2.500000"),
        "output_price": Decimal("10.000000"),
        "request_id": f"req-{uuid.uuid4().hex}",
    }
    fields.update(overrides)
    return fields
