"""Attack review of the day's changes (89b2108..HEAD): the strict API inputs and the schema's new
promises (ENFORCE_NON_BLANK_FIELDS), the role decisions taken under a lock and the invitations a
member takes back when losing power, and `make run`'s new start-up checks and signal handling.
Each test in the first sections failed on the code it was written against; the last section
records what held."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from django.test import Client

from accounts import services
from accounts.models import Membership
from accounts.tests.factories import make_user
from accounts.tests.test_api import API, key_client, privileged, session_client
from accounts.tests.test_attack_lifecycle import _join
from billing.tests.conftest import plans  # noqa: F401  (a fixture)
from chat import services as chat_services
from config import embedded
from config.db import rls
from config.tests.api_schema import assert_documented

OWNER, ADMIN, MEMBER = Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.MEMBER


@pytest.fixture
def alice(catalog, plans):  # noqa: F811
    return make_user(email="alice@example.com", display_name="Alice")


@pytest.fixture
def acme(alice):
    with rls.privileged(reason="test"):
        return services.organization_create(user=alice, name="Acme")


def _no_raise(client):
    client.raise_request_exception = False
    return client


# --- 1. The schema's minLength 1 on text fields that answers send empty ---------------------------


@pytest.mark.django_db(transaction=True)
def test_search_answers_match_the_published_schema_for_title_hits_and_untitled_conversations(alice):
    """ENFORCE_NON_BLANK_FIELDS puts minLength 1 on every writable CharField without allow_blank,
    and without COMPONENT_SPLIT_REQUEST that includes output serializers: SearchHitOut.role is
    documented "empty for a title hit" yet the schema now says minLength 1, and a hit in an untitled
    conversation has conversation_title "". A schema-driven client (or schemathesis's response
    check) rejects these 200s. Correct: the schema allows what the API answers."""
    chat_services.conversation_create(user=alice, title="Tides report")  # a title hit: role ""
    untitled = chat_services.conversation_create(user=alice, title="")
    from chat.models import Message

    with rls.atomic_as(alice.pk):
        Message.objects.create(conversation=untitled, user_id=alice.pk, sequence=0, role=Message.Role.USER, content="tides are high")
    response = key_client(alice, scopes=["chat:read"]).get(f"{API}/search", {"q": "tides"})
    assert response.status_code == 200, response.content[:300]
    hits = response.json()["results"]
    assert {(hit["role"], hit["conversation_title"]) for hit in hits} == {("", "Tides report"), ("user", "")}
    assert_documented(response, path="/api/v1/search", method="GET")


# --- 2. Invitations a member takes back when losing power ----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_owner_demoted_to_admin_cannot_come_back_as_owner_through_an_owner_invitation_they_sent(alice, acme):
    """Olga (owner) invites her other address as owner; Alice (owner) demotes Olga to admin, so
    that she can no longer make or unmake owners. membership_role_change withdraws the sender's
    invitations only when the new role is below admin, so Olga's owner invitation stays pending:
    her second account accepts it and is an owner of Acme (and can demote or remove Alice).
    Correct: losing the owner role withdraws the owner invitations one sent (as losing admin
    withdraws all), so the demotion holds."""
    olga = make_user(email="olga@example.com")
    olga_membership = _join(acme, olga, OWNER)
    with rls.privileged(reason="test: Olga invites her other address as owner"):
        _invitation, token = services.invitation_create(actor=olga, organization=acme, email="olga.alt@example.com", role=OWNER)
    demoted = session_client(alice).patch(f"{API}/organizations/{acme.pk}/members/{olga_membership.pk}", {"role": "admin"}, format="json")
    assert demoted.status_code == 200, demoted.content[:300]
    alt = make_user(email="olga.alt@example.com")
    response = _no_raise(session_client(alt)).post(f"{API}/invitations/accept", {"token": token}, format="json")
    assert not privileged(Membership).filter(organization=acme, user=alt, role=OWNER).exists(), "the demoted owner is back, as owner"
    assert response.status_code in (400, 404), (response.status_code, response.content[:300])


@pytest.mark.django_db(transaction=True)
def test_staff_removing_an_admin_in_the_admin_site_withdraws_the_invitations_they_sent(alice, acme):
    """Staff offboard a rogue admin from the organization admin's Members inline (the tool staff
    have for it). The inline deletes the membership directly, bypassing membership_remove, so
    _invitations_sent_withdrawn never runs: Mallory's invitation to her other address stays
    pending and lets her back in as admin, which the service path (test_attack_lifecycle) now
    prevents. Correct: the same rule whichever way the membership goes."""
    mallory = make_user(email="mallory@example.com")
    mallory_membership = _join(acme, mallory, ADMIN)
    with rls.privileged(reason="test: Mallory invites her other address"):
        _invitation, token = services.invitation_create(actor=mallory, organization=acme, email="mallory.alt@example.com", role=ADMIN)
    staff = Client(raise_request_exception=False)
    staff.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    owner = privileged(Membership).get(organization=acme, user=alice)
    data = {
        "name": acme.name,
        "slug": acme.slug,
        "auto_join_domain": "",
        "created_by": str(alice.pk),
        "memberships-TOTAL_FORMS": "2",
        "memberships-INITIAL_FORMS": "2",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    for i, membership in enumerate(privileged(Membership).filter(pk__in=[owner.pk, mallory_membership.pk]).order_by("created_at", "pk")):
        data.update(
            {
                f"memberships-{i}-id": str(membership.pk),
                f"memberships-{i}-organization": str(acme.pk),
                f"memberships-{i}-user": str(membership.user_id),
                f"memberships-{i}-role": membership.role,
            }
        )
        if membership.pk == mallory_membership.pk:
            data[f"memberships-{i}-DELETE"] = "on"
    response = staff.post(f"/admin/accounts/organization/{acme.pk}/change/", data)
    assert response.status_code == 302, response.status_code
    assert not privileged(Membership).filter(pk=mallory_membership.pk).exists()
    alt = make_user(email="mallory.alt@example.com")
    accepted = _no_raise(session_client(alt)).post(f"{API}/invitations/accept", {"token": token}, format="json")
    assert not privileged(Membership).filter(organization=acme, user=alt).exists(), "the removed admin is back, as admin"
    assert accepted.status_code in (400, 404), accepted.status_code


# --- 3. make run: the port check and a stop signal while the processes start ---------------------


def _time_wait_on(port: int) -> None:
    """A server on 127.0.0.1:port (SO_REUSEADDR, as gunicorn binds) that served one connection and
    closed it first, as a web server does: the port is left in TIME_WAIT (60 s on Linux)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()
    client.recv(1)
    client.close()
    server.close()


def test_make_run_right_after_a_run_that_served_requests_is_not_refused_for_a_busy_port():
    """Stop `make run` after the app served a page, start it again: gunicorn (SO_REUSEADDR) could
    bind at once, but _port_free probes with a plain bind, which Linux refuses while the last
    connections sit in TIME_WAIT: "Port 8000 is in use (another `make run`?)" for a minute after
    every stop. Correct: the probe binds as the server will (SO_REUSEADDR), refusing only a port
    something listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _time_wait_on(port)
    with socket.socket() as gunicorn_like:  # what the web server will do: it can bind
        gunicorn_like.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        gunicorn_like.bind(("127.0.0.1", port))
    embedded._port_free(port)  # raises StartupRefused on the current code
    with socket.socket() as listening:  # a port something listens on is still refused
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", port))
        listening.listen()
        with pytest.raises(embedded.StartupRefused, match="in use"):
            embedded._port_free(port)


@contextlib.contextmanager
def _signal_handlers_restored():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_a_stop_signal_while_the_worker_beat_and_web_start_stops_those_already_started(monkeypatch, tmp_path):
    """SIGTERM (an IDE's stop button, `kill`, systemd: sent to the supervisor alone, not its
    process group) while command_run starts its three processes: the handler raises
    _StopRequested out of the list `procs = [Popen(worker), Popen(beat), Popen(web)]` before it is
    assigned, so `procs` is still [] and the finally stops nothing: the worker (and beat) already
    started run on, orphaned, against servers that are then stopped. Correct: every process
    started is stopped. (The servers and start-up steps are skipped here; the three processes are
    real children, `sleep`, standing in for celery and gunicorn; the signal is sent right after the
    second one starts.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CONFAB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("PORT", str(port))
    monkeypatch.setattr(embedded.Servers, "start", lambda self: {})
    monkeypatch.setattr(embedded, "_prepare_database", lambda env: None)
    monkeypatch.setattr(embedded, "_manage", lambda env, *args: None)
    real_popen = subprocess.Popen
    started: list[subprocess.Popen] = []

    def popen(args, **kwargs):
        child = real_popen([shutil.which("sleep"), "60"])
        started.append(child)
        if len(started) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return child

    monkeypatch.setattr(embedded.subprocess, "Popen", popen)
    try:
        with _signal_handlers_restored():
            code = embedded.command_run()
        assert code == 0
        time.sleep(0.5)
        left = [child.pid for child in started if child.poll() is None]
        assert not left, f"processes started by the run are still running after it stopped: {left}"
    finally:
        for child in started:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_the_short_postgres_socket_dir_in_the_shared_temp_dir_is_not_someone_elses():
    """A checkout under a path with a space gets its PostgreSQL socket in
    /tmp/confab-pg-<sha1 of the data dir>[:12]: a predictable name in a world-writable directory,
    made with mkdir(exist_ok=True). Another local user who made it first (or a symlink) owns the
    directory the server's socket, which trusts every local connection, is put in: they can
    replace it. Correct: a directory that exists and is not this user's own 0700 directory is not
    used (a fresh name, or a refusal)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    import pwd

    pgdata = Path("/srv/My Projects/confab/var/postgres")
    squatted = Path(tempfile.gettempdir()) / f"confab-pg-{hashlib.sha1(str(pgdata).encode()).hexdigest()[:12]}"
    shutil.rmtree(squatted, ignore_errors=True)
    squatted.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(squatted, nobody.pw_uid, nobody.pw_gid)
    squatted.chmod(0o777)
    try:
        choose = embedded._socket_dir_without_whitespace(lambda data, runtime: Path("/srv/My Projects/confab/var/postgres"))
        chosen = choose(pgdata, Path("/run/user/0"))
        info = chosen.lstat()
        assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o700), f"{chosen}: uid {info.st_uid}, mode {oct(info.st_mode)}"
    finally:
        shutil.rmtree(squatted, ignore_errors=True)


def test_a_stale_pid_file_naming_another_data_dirs_postgres_is_not_taken_for_this_server(tmp_path):
    """After a reboot, var/postgres/postmaster.pid is left behind, and its pid may now be one of a
    system PostgreSQL's processes (they start at boot, all called postgres). postgres_running
    checks only the name, so it answers True: the run neither starts the embedded server nor
    removes the file, points the URLs at the dead server's socket directory, and fails at migrate.
    Correct: the process must be the server of this data dir (its command line names it, as
    pg_ctl starts it with -D <data dir>). A stand-in process called postgres, started without this
    data dir, plays the system server."""
    data = tmp_path / "pg"
    data.mkdir()
    fake = tmp_path / "bin" / "postgres"
    fake.parent.mkdir()
    shutil.copy(shutil.which("sleep"), fake)
    other = subprocess.Popen([str(fake), "30"])
    try:
        (data / "postmaster.pid").write_text(f"{other.pid}\n{data}\n")
        assert not embedded.postgres_running(data), "a postgres serving another data dir is taken for this one's server"
    finally:
        other.kill()
        other.wait()


# --- What held (kept as regression checks) --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_held_flag_style_stream_and_repeated_query_values_are_400s_with_a_sentence_not_500s(alice):
    """`?stream` (no value) and `?stream=` are 400 "Must be a valid boolean" (documented), never a
    stream by accident nor a 500; `?archived=true&archived=` takes the last value, empty: a 400 as any empty value."""
    conversation = chat_services.conversation_create(user=alice, title="Tides")
    api = _no_raise(key_client(alice, scopes=["chat:read", "chat:write"]))
    for query in ("stream", "stream=", "stream=maybe"):
        response = api.post(f"{API}/conversations/{conversation.pk}/messages?{query}", {"content": "hi"}, format="json")
        assert response.status_code == 400, (query, response.status_code)
        assert_documented(response, path="/api/v1/conversations/{conversation_id}/messages", method="POST")
    assert api.get(f"{API}/conversations?archived=true&archived=").status_code == 400
    assert api.get(f"{API}/conversations?archived=&archived=false").json()["count"] == 1
    for size in ("", "0", "201"):
        assert api.get(f"{API}/search", {"q": "tides", "page_size": size}).status_code == 400


def test_held_the_field_encryption_key_is_made_once_and_private(tmp_path):
    key = embedded.field_encryption_key(tmp_path / "fresh")
    assert embedded.field_encryption_key(tmp_path / "fresh") == key
    assert (tmp_path / "fresh" / "field-encryption.key").stat().st_mode & 0o777 == 0o600


def test_held_a_zombie_named_in_postmaster_pid_is_stale(tmp_path):
    data = tmp_path / "pg"
    data.mkdir()
    zombie = subprocess.Popen(["true"])
    time.sleep(0.5)  # exited, not reaped: a zombie
    (data / "postmaster.pid").write_text(f"{zombie.pid}\n{data}\n")
    assert not embedded.postgres_running(data) and not (data / "postmaster.pid").exists()
    zombie.wait()
