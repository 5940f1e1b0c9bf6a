"""Emails whose domain IDNA 2008 spells otherwise than they are stored take its one spelling.

normalize_email now spells a domain by IDNA 2008 (UTS 46 non-transitional), not Python's IDNA 2003
codec, which maps ß to ss and could not read some punycode back at all: `anna@xn--strae-oqa.de`
stayed stored as typed, and sign-in, which now reads it as `anna@straße.de`, would no longer find
it. Such a user and pending invitation take the new spelling when it is provably the same domain,
the one their mail has gone to (Django spells a domain for sending with that same IDNA 2003
codec), and no other account has it (left for staff, counted in the output).

Accounts stored as `strasse.de` are left alone: IDNA 2003 made `straße.de` that, but so is a real
`strasse.de` mailbox, another owner's, and their mail has gone to `strasse.de` all along.

The rule is frozen here (the `idna` package, pinned in requirements.txt): later changes to
normalize_email do not change what this migration did. Reversing it keeps the emails as they are:
both spellings are one mailbox, and which one a user typed once is not kept anywhere."""

import idna
from django.db import migrations
from django.db.models import Q


def _one_spelling(email: str) -> str:
    local, at, domain = email.rpartition("@")
    if not (at and domain and (not domain.isascii() or "xn--" in domain)):
        return email
    try:
        spelled = idna.encode(domain, uts46=True)
        mailed_to = domain.encode("idna")  # how Django's mail spelled it until now
    except UnicodeError:  # idna.IDNAError is one
        return email
    if spelled.lower() != mailed_to.lower():
        return email  # another domain: not this account's mailbox to take
    return f"{local}@{idna.decode(spelled)}"


def forwards(apps, schema_editor):
    alias = schema_editor.connection.alias
    User = apps.get_model("accounts", "User")
    Invitation = apps.get_model("accounts", "Invitation")
    spelled_by_idna = Q(email__regex="[^[:ascii:]]") | Q(email__contains="xn--")  # the only domains IDNA spells
    left = 0
    for user in User.objects.using(alias).filter(spelled_by_idna).only("id", "email"):
        spelled = _one_spelling(user.email)
        if spelled == user.email:
            continue
        if User.objects.using(alias).filter(email=spelled).exists():
            left += 1
            continue
        User.objects.using(alias).filter(pk=user.pk).update(email=spelled)
    pending = Invitation.objects.using(alias).filter(accepted_at__isnull=True, revoked_at__isnull=True)
    for invitation in pending.filter(spelled_by_idna).only("id", "email", "organization_id"):
        spelled = _one_spelling(invitation.email)
        if spelled == invitation.email:
            continue
        if pending.filter(organization_id=invitation.organization_id, email=spelled).exists():
            continue  # one pending invitation per address: the other spelling's stands
        Invitation.objects.using(alias).filter(pk=invitation.pk).update(email=spelled)
    if left:
        print(f"\n  accounts 0017: {left} account(s) under an email whose IDNA 2008 spelling has an account too: left for staff.")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0016_punycode_emails_one_spelling")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
