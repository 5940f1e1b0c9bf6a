"""POST /billing/checkout/ and /billing/portal/: to Stripe's hosted pages, or back to the
billing page with the reason when that is not possible."""

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts import selectors as accounts_selectors
from accounts.decorators import login_required
from accounts.models import Organization
from billing import selectors, stripe_services
from config.db import rls
from config.errors import ApplicationError
from config.http import site_url


def _organization(request) -> Organization:
    """The organization named in the form, among the caller's."""
    try:
        return accounts_selectors.organization_get_or_first(user=request.user, organization_id=request.POST.get("organization", ""))
    except Http404:
        raise ApplicationError("Choose one of your organizations.", {"code": "invalid", "field": "organization"})


@rls.own_transactions("POST")  # Stripe is called: no transaction is held while it answers
@login_required
@require_POST
def checkout(request):
    try:
        with rls.atomic_as(request.user.pk):
            organization = _organization(request)
            slug = request.POST.get("plan", "")
            plan = selectors.plan_get(slug=slug) if slug.isascii() and slug.replace("-", "").replace("_", "").isalnum() else None
        if plan is None:
            raise ApplicationError("Choose one of the plans offered.", {"code": "invalid", "field": "plan"})
        url = stripe_services.checkout_session_create(
            actor=request.user,
            organization=organization,
            plan=plan,
            interval=request.POST.get("interval", "month"),
            return_url=site_url(request) + selectors.billing_page_path(organization.pk),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_back(request))
    return redirect(url)


@rls.own_transactions("POST")  # Stripe is called: no transaction is held while it answers
@login_required
@require_POST
def portal(request):
    try:
        with rls.atomic_as(request.user.pk):
            organization = _organization(request)
        url = stripe_services.portal_session_create(
            actor=request.user, organization=organization, return_url=site_url(request) + selectors.billing_page_path(organization.pk)
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_back(request))
    return redirect(url)


def _back(request) -> str:
    """The billing page of the organization the form named, when it is one of the caller's."""
    try:
        with rls.atomic_as(request.user.pk):
            organization = _organization(request)
    except ApplicationError:
        return reverse("billing:page")
    return selectors.billing_page_path(organization.pk)
