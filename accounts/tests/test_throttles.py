"""Throttles that cannot be turned against users: sign-in by (email, IP), by IP and a far
higher per-email ceiling; password-reset mail per email and per IP; API 429 + Retry-After.
Counted in the real Redis."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts import services
from accounts.errors import LoginThrottled
from accounts.services import throttling
from accounts.tests.factories import PASSWORD, mail_arrives, make_user
from config.cache import redis_client
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

ATTACKER, VICTIM, ELSEWHERE = "198.51.100.66", "203.0.113.5", "192.0.2.44"
WRONG = "wrong-password-1"


def login(email, password, ip, path="/accounts/login/"):
    data = {"username": email, "password": password}
    if path.startswith("/admin/"):
        data["next"] = "/admin/"
    return Client(REMOTE_ADDR=ip).post(path, data)


def throttled(response) -> bool:
    return response.status_code == 200 and b"Too many failed sign-in attempts" in response.content


def test_an_attacker_on_another_ip_does_not_lock_the_victim_out():
    make_user(email="victim@example.com")
    for _ in range(10):
        login("victim@example.com", WRONG, ATTACKER)

    assert throttled(login("victim@example.com", PASSWORD, ATTACKER))  # the guesser is stopped
    assert login("victim@example.com", PASSWORD, VICTIM).status_code == 302  # the owner is not


def test_five_failures_lock_that_email_on_that_ip():
    make_user(email="typo@example.com")
    for attempt in range(5):
        response = login("typo@example.com", WRONG, VICTIM)
        assert not throttled(response), attempt
    assert throttled(login("typo@example.com", PASSWORD, VICTIM))


def test_one_ip_guessing_across_many_emails_is_stopped(settings):
    settings.THROTTLES = {**settings.THROTTLES, "login_ip": (8, 900)}
    make_user(email="someone@example.com")
    for n in range(8):
        assert not throttled(login(f"guess{n}@example.com", WRONG, ATTACKER))

    assert throttled(login("someone@example.com", PASSWORD, ATTACKER))
    assert login("someone@example.com", PASSWORD, ELSEWHERE).status_code == 302


def test_many_ips_on_one_email_meet_the_higher_ceiling(settings):
    settings.THROTTLES = {**settings.THROTTLES, "login_email": (12, 900)}
    make_user(email="famous@example.com")
    for n in range(12):
        login("famous@example.com", WRONG, f"198.51.100.{n + 1}")

    assert throttled(login("famous@example.com", PASSWORD, VICTIM))


def test_success_clears_only_its_own_pair():
    make_user(email="forgetful@example.com")
    for _ in range(4):
        login("forgetful@example.com", WRONG, VICTIM)
    assert login("forgetful@example.com", PASSWORD, VICTIM).status_code == 302
    for _ in range(4):
        assert not throttled(login("forgetful@example.com", WRONG, VICTIM))


def test_admin_login_is_throttled_by_pair_too():
    make_user(email="boss@example.com", role="staff", is_superuser=True)
    for _ in range(5):
        login("boss@example.com", WRONG, ATTACKER, path="/admin/login/")

    refused = login("boss@example.com", PASSWORD, ATTACKER, path="/admin/login/")
    assert refused.status_code == 200  # the admin login form again, not the admin index
    admitted = login("boss@example.com", PASSWORD, VICTIM, path="/admin/login/")
    assert admitted.status_code == 302 and admitted["Location"] == "/admin/"


def test_refused_attempts_do_not_count_toward_the_ceilings(settings):
    """A guesser locked out of their pair keeps posting (admin sends user_login_failed even
    for a throttled attempt): those refusals must not push the victim's per-email ceiling."""
    settings.THROTTLES = {**settings.THROTTLES, "login_email": (8, 900)}
    make_user(email="ceo@example.com", role="staff", is_superuser=True)
    for _ in range(20):
        login("ceo@example.com", WRONG, ATTACKER, path="/admin/login/")

    assert login("ceo@example.com", PASSWORD, VICTIM, path="/admin/login/").status_code == 302


def test_concurrent_failures_are_all_counted(settings):
    """The count is one atomic script per request: 40 racing failures are 40, not fewer."""
    settings.THROTTLES = {**settings.THROTTLES, "login_email_ip": (40, 900), "login_ip": (1000, 900)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: services.login_failure_record(email="race@example.com", ip=ATTACKER), range(39)))
    services.login_throttle_check(email="race@example.com", ip=ATTACKER)  # 39 < 40
    services.login_failure_record(email="race@example.com", ip=ATTACKER)
    with pytest.raises(LoginThrottled) as refused:
        services.login_throttle_check(email="race@example.com", ip=ATTACKER)
    assert 0 < refused.value.retry_after <= 900


def test_ipv6_addresses_in_one_slash_64_share_a_count():
    for n in range(5):
        services.login_failure_record(email="v6@example.com", ip=f"2001:db8:1:2::{n + 1}")
    with pytest.raises(LoginThrottled):
        services.login_throttle_check(email="v6@example.com", ip="2001:db8:1:2::ffff")
    services.login_throttle_check(email="v6@example.com", ip="2001:db8:1:3::1")


# --- Password reset -------------------------------------------------------------------------


def reset(email, ip):
    return Client(REMOTE_ADDR=ip).post("/accounts/password-reset/", {"email": email})


def test_password_reset_mail_is_throttled_per_email(celery_worker):
    make_user(email="inbox@example.com")
    for n in range(3):
        assert reset("inbox@example.com", f"198.51.100.{n + 1}").status_code == 302
    assert len(mail_arrives(3)) == 3

    refused = reset("inbox@example.com", ELSEWHERE)
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert b"Too many password reset requests" in refused.content
    assert len(mail_arrives(4, timeout=2)) == 3


def test_password_reset_is_throttled_per_ip_for_unknown_emails_too(settings, celery_worker):
    settings.THROTTLES = {**settings.THROTTLES, "password_reset_ip": (4, 3600)}
    make_user(email="real@example.com")
    for n in range(4):
        assert reset(f"nobody{n}@example.com", ATTACKER).status_code == 302

    assert reset("real@example.com", ATTACKER).status_code == 429
    assert len(mail_arrives(1, timeout=2)) == 0
    assert reset("real@example.com", VICTIM).status_code == 302
    assert len(mail_arrives(1)) == 1


# --- API --------------------------------------------------------------------------------------


def key_client(user) -> APIClient:
    with rls.privileged(reason="test: issue an API key"):
        _, secret = services.api_key_create(user=user, name="throttle test", scopes=["account:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_api_refusal_is_429_with_retry_after_and_the_error_shape(settings):
    settings.THROTTLES = {**settings.THROTTLES, "api": (3, 60)}
    user = make_user()
    busy, other = key_client(user), key_client(user)
    for _ in range(3):
        assert busy.get("/api/v1/me").status_code == 200

    refused = busy.get("/api/v1/me")
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 60
    body = refused.json()
    assert body["message"] and body["extra"]["code"] == "throttled"
    assert 0 < body["extra"]["retry_after"] <= 60
    assert other.get("/api/v1/me").status_code == 200  # counted per key


# --- The API throttle's leases (accounts.services.throttling.api_request_throttle) ------------


def _counted_in_redis(subject: str) -> int:
    return int(redis_client().get(f"{throttling.KEY_PREFIX}:api:{subject}") or 0)


def test_a_process_counts_its_api_requests_ahead_in_leases_and_asks_redis_once_a_lease(settings):
    settings.THROTTLES = {**settings.THROTTLES, "api": (100_000, 60)}
    most = throttling.API_LEASE_MOST
    for served in range(1, 2 * most + 2):
        assert throttling.api_request_throttle(subject="key:lease") is None
        # Counted in Redis before it is served: whole leases, so never fewer than served.
        assert _counted_in_redis("key:lease") == most * ((served + most - 1) // most)


def test_processes_sharing_a_key_never_pass_its_limit_and_stop_only_at_it(settings, monkeypatch):
    settings.THROTTLES = {**settings.THROTTLES, "api": (100, 60)}
    processes = [{}, {}]  # each web process's own leases
    served = 0
    for turn in range(300):
        monkeypatch.setattr(throttling, "_api_leases", processes[turn % 2])
        if throttling.api_request_throttle(subject="key:shared") is None:
            served += 1
    assert served == 100  # taking turns, neither is left holding any: all 100, never 101
    for leases in processes:
        monkeypatch.setattr(throttling, "_api_leases", leases)
        assert 0 < throttling.api_request_throttle(subject="key:shared") <= 60


def test_a_lease_ends_with_its_window(settings):
    settings.THROTTLES = {**settings.THROTTLES, "api": (100_000, 1)}
    assert throttling.api_request_throttle(subject="key:short") is None
    assert _counted_in_redis("key:short") == throttling.API_LEASE_MOST
    time.sleep(1.2)  # the window (and its count in Redis) is over; the unspent rest of the lease too
    assert _counted_in_redis("key:short") == 0
    assert throttling.api_request_throttle(subject="key:short") is None
    assert _counted_in_redis("key:short") == throttling.API_LEASE_MOST  # a new lease in the new window


def test_with_redis_stopped_each_process_counts_api_requests_itself(settings, own_redis):
    from config import embedded

    settings.THROTTLES = {**settings.THROTTLES, "api": (3, 60)}
    embedded.redis_stop(own_redis)
    assert [throttling.api_request_throttle(subject="key:outage") for _ in range(3)] == [None] * 3
    assert 0 < throttling.api_request_throttle(subject="key:outage") <= 60


def test_threads_of_one_process_racing_for_leases_spend_every_request_they_counted(settings):
    settings.THROTTLES = {**settings.THROTTLES, "api": (400, 60)}

    def calls(_) -> int:
        return sum(throttling.api_request_throttle(subject="key:threads") is None for _ in range(50))

    with ThreadPoolExecutor(max_workers=16) as pool:
        served = sum(pool.map(calls, range(16)))
    assert served == 400  # 800 asked: no lease overwritten by another's, so none left unspent
    assert _counted_in_redis("key:threads") == 400
