"""Emails stored with a punycode (`xn--`) domain are rewritten to the domain's one spelling.

Sign-up, sign-in, invitations and password resets now read `alice@xn--bcher-kva.com` as
`alice@bücher.com` (UserManager.normalize_email): an account stored under the punycode spelling
would no longer be found by its own address. Each such user and pending invitation takes the
Unicode spelling, unless another account already has it (two accounts for one mailbox, made
before this rule: left as they are for staff to merge, and counted in the output). The rule is
frozen here: later changes to normalize_email do not change what this migration did.
Reversing it keeps the emails as they are: the punycode spelling is the same mailbox, and
which spelling a user typed once is not kept anywhere."""

from django.db import migrations


def _one_spelling(email: str) -> str:
    local, at, domain = email.rpartition("@")
    if not (at and domain and "xn--" in domain):
        return email
    try:
        return f"{local}@{domain.encode('idna').decode('idna')}"
    except UnicodeError:
        return email


def forwards(apps, schema_editor):
    alias = schema_editor.connection.alias
    User = apps.get_model("accounts", "User")
    Invitation = apps.get_model("accounts", "Invitation")
    left = 0
    for user in User.objects.using(alias).filter(email__contains="xn--").only("id", "email"):
        spelled = _one_spelling(user.email)
        if spelled == user.email:
            continue
        if User.objects.using(alias).filter(email=spelled).exists():
            left += 1
            continue
        User.objects.using(alias).filter(pk=user.pk).update(email=spelled)
    for invitation in Invitation.objects.using(alias).filter(email__contains="xn--", accepted_at__isnull=True).only("id", "email"):
        spelled = _one_spelling(invitation.email)
        if spelled != invitation.email:
            Invitation.objects.using(alias).filter(pk=invitation.pk).update(email=spelled)
    if left:
        print(f"\n  accounts 0016: {left} account(s) under a punycode email whose other spelling has an account too: left for staff.")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0015_api_key_changed_notify_always")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
