"""The billing page (/billing/): current plan, usage against every limit, plan comparison,
and the owner's and admins' changes. Members read it; the services refuse their changes."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors as accounts_selectors
from accounts.decorators import login_required
from billing import selectors, services, stripe_services
from billing.forms import PlanChangeForm
from config.db import rls
from config.errors import ApplicationError
from config.http import site_url


def _page(request, organization, *, status: int = 200, error: str | None = None):
    overview = selectors.subscription_overview(organization=organization)
    context = {
        **overview,
        "organization": organization,
        "organizations": accounts_selectors.organization_list(user=request.user),
        "can_manage": organization.role in selectors.MANAGER_ROLES,
        "plans": list(selectors.plan_list()),
        "error": error,
    }
    return render(request, "billing/billing.html", context, status=status)


@login_required
@require_GET
def billing_page(request):
    organization = accounts_selectors.organization_get_or_first(user=request.user, organization_id=request.GET.get("org"))
    back_from_checkout = CHECKOUT_OUTCOMES.get(request.GET.get("checkout", ""))
    if back_from_checkout:
        messages.info(request, back_from_checkout)
    return _page(request, organization)


# What Stripe Checkout's return says (success_url and cancel_url, stripe_services.checkout_session_create).
CHECKOUT_OUTCOMES = {
    "success": "Payment received: the new plan applies as soon as Stripe confirms it, usually within seconds.",
    "canceled": "Checkout was canceled: nothing was charged and your plan is unchanged.",
}


def _run(request, organization_id, action, success: str):
    organization = accounts_selectors.organization_get_or_first(user=request.user, organization_id=organization_id)
    try:
        action(organization)
    except ApplicationError as exc:
        return _page(request, organization, status=exc.status_code, error=exc.message)
    messages.success(request, success)
    return redirect(selectors.billing_page_path(organization.pk))


def _change_message(subscription, plan) -> str:
    if subscription.plan_id == plan.pk:
        return f"You are now on the {plan.name} plan."
    if subscription.scheduled_plan_id == plan.pk:
        return f"You will move to the {plan.name} plan when the current period ends."
    return f"Your request for the {plan.name} plan was sent; staff will set it up with you (payment is not configured)."


@rls.own_transactions("POST")  # a paid upgrade calls Stripe: no transaction is held while it answers
@login_required
@require_POST
def plan_change(request, organization_id):
    with rls.atomic_as(request.user.pk):
        organization = accounts_selectors.organization_get_or_first(user=request.user, organization_id=organization_id)
        form = PlanChangeForm(request.POST)
        if not form.is_valid():
            return _page(request, organization, status=400, error=" ".join(e for errors in form.errors.values() for e in errors))
        plan = selectors.plan_get(slug=form.cleaned_data["plan"])
        if plan is None:
            return _page(request, organization, status=400, error="There is no such plan.")
    try:
        outcome = stripe_services.subscription_change_or_checkout(
            actor=request.user,
            organization=organization,
            plan=plan,
            interval=form.cleaned_data["interval"],
            immediately=form.cleaned_data["immediately"],
            return_url=site_url(request) + selectors.billing_page_path(organization.pk),
        )
    except ApplicationError as exc:
        with rls.atomic_as(request.user.pk):
            return _page(request, organization, status=exc.status_code, error=exc.message)
    if isinstance(outcome, str):  # a paid upgrade: the URL of its Stripe Checkout page
        return redirect(outcome)
    messages.success(request, _change_message(outcome, plan))
    return redirect(selectors.billing_page_path(organization.pk))


@login_required
@require_POST
def subscription_cancel(request, organization_id):
    return _run(
        request,
        organization_id,
        lambda org: services.subscription_cancel(actor=request.user, organization=org),
        "Your plan will end with the current period; you then move to the Free plan.",
    )


@login_required
@require_POST
def subscription_resume(request, organization_id):
    return _run(
        request, organization_id, lambda org: services.subscription_resume(actor=request.user, organization=org), "Your plan continues."
    )
