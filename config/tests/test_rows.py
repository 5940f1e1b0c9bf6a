"""config/db/rows.model_from_row builds what Django's own loading (Model.from_db) builds from
the same row, without Model.__init__."""

import pytest
from django.db import connections
from django.db.models.signals import post_init

from accounts.tests.factories import make_user
from billing.models import Plan
from chat.models import Conversation
from chat.services import conversation_create
from config.db import rls
from config.db.rows import columns_of, model_from_row

pytestmark = pytest.mark.django_db(transaction=True)


def _row(model, pk, alias: str = "default") -> tuple:
    with connections[alias].cursor() as cur:
        cur.execute(f"SELECT {columns_of(model, 't')} FROM {model._meta.db_table} t WHERE t.id = %s", [pk])
        return cur.fetchone()


@pytest.mark.parametrize("model", [Conversation, Plan])
def test_an_instance_from_a_row_is_the_one_django_loads(model):
    user = make_user()
    with rls.atomic_as(user.pk):
        if model is Conversation:
            pk = conversation_create(user=user).pk
            Conversation.objects.filter(pk=pk).update(tags=["work", "ideas"])  # a JSON value through its converter
        else:
            pk = Plan.objects.order_by("pk").values_list("pk", flat=True).first()
        ours = model_from_row(model, "default", _row(model, pk))
        django = model.objects.get(pk=pk)
    names = [f.attname for f in model._meta.concrete_fields]
    assert {name: getattr(ours, name) for name in names} == {name: getattr(django, name) for name in names}
    assert (ours._state.db, ours._state.adding) == ("default", False)
    assert ours.pk == pk and ours == django
    assert not ours._state.fields_cache  # no related object cached


def test_loading_from_a_row_is_announced_and_the_instance_saves_as_an_update():
    """post_init is sent, as loading sends it (the audit log's snapshot), and a save is an UPDATE of the row."""
    user = make_user()
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append((sender, instance.__dict__.get("title")))

    post_init.connect(receiver, sender=Conversation)
    try:
        with rls.atomic_as(user.pk):
            conversation = conversation_create(user=user)
            seen.clear()
            loaded = model_from_row(Conversation, "default", _row(Conversation, conversation.pk))
            assert seen == [(Conversation, loaded.title)]  # every field set before the signal
            loaded.title = "Renamed"
            loaded.save(update_fields=["title"])
            assert Conversation.objects.count() == 1
            assert Conversation.objects.get(pk=conversation.pk).title == "Renamed"
    finally:
        post_init.disconnect(receiver, sender=Conversation)
