"""Settings pages for organizations (/settings/organization/...): members, invitations, roles."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.core.exceptions import NON_FIELD_ERRORS
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors, services
from accounts.decorators import login_required
from accounts.forms import InvitationCreateForm, MembershipRoleForm, OrganizationCreateForm, OrganizationUpdateForm, add_service_error
from accounts.models import Membership
from accounts.views._common import _base_url, _htmx_redirect, _is_htmx
from config.errors import ApplicationError


def _organization_url(organization_id) -> str:
    return f"{reverse('settings:organization')}?org={organization_id}"


def _organization_for(request, organization_id=None):
    """One of the user's organizations (404 for any other); default: the personal one."""
    if organization_id is None:
        organization = selectors.organization_list(user=request.user).first()
        if organization is None:
            raise Http404("You belong to no organization.")
        return organization
    try:
        organization_id = uuid.UUID(str(organization_id))
    except ValueError as exc:
        raise Http404("No such organization.") from exc
    return selectors.organization_get(user=request.user, organization_id=organization_id)


REFUSED_FORM_KEY = "organization_refused_form:"


def _refused(request, organization_id=None, *, message: str | None = None, form_name: str | None = None, form=None):
    """Post/Redirect/Get: a refusal is shown on the organization page (the action URLs take POST only),
    with the submitted input and its errors kept for that one page view."""
    if message:
        messages.error(request, message)
    if form is not None:
        request.session[REFUSED_FORM_KEY + form_name] = {
            "data": {name: value for name, value in form.data.items() if name != "csrfmiddlewaretoken"},
            "errors": {name: [e["message"] for e in errors] for name, errors in form.errors.get_json_data().items()},
        }
    return redirect(_organization_url(organization_id) if organization_id else reverse("settings:organization"))


def _form_kept(request, form_name: str, form_class, **kwargs):
    """The form a refused POST left behind (bound, with its errors), else a fresh one."""
    kept = request.session.pop(REFUSED_FORM_KEY + form_name, None)
    if kept is None:
        return form_class(**kwargs)
    form = form_class(kept["data"])
    form.is_valid()
    for name, errors in kept["errors"].items():
        field = None if name == NON_FIELD_ERRORS else name
        for error in errors:
            if error not in form.errors.get(name, []):
                form.add_error(field, error)
    return form


def _organization_page(request, organization):
    is_admin = organization.role in (Membership.Role.OWNER, Membership.Role.ADMIN)
    context = {
        "organization": organization,
        "organizations": selectors.organization_list(user=request.user),
        "memberships": selectors.membership_list(organization=organization),
        "invitations": [i for i in selectors.invitation_list(organization=organization) if i.is_pending] if is_admin else [],
        "invitations_for_you": selectors.invitation_pending_for(user=request.user),
        "is_admin": is_admin,
        "role_label": Membership.Role(organization.role).label,
        "roles": Membership.Role.choices,
        "update_form": _form_kept(
            request,
            "update",
            OrganizationUpdateForm,
            initial={"name": organization.name, "auto_join_domain": organization.auto_join_domain},
        ),
        "invite_form": _form_kept(request, "invite", InvitationCreateForm),
        "create_form": _form_kept(request, "create", OrganizationCreateForm),
    }
    return render(request, "accounts/settings/organization.html", context)


@login_required
@require_GET
def organization(request):
    return _organization_page(request, _organization_for(request, request.GET.get("org")))


@login_required
@require_POST
def organization_create(request):
    form = OrganizationCreateForm(request.POST)
    if form.is_valid():
        try:
            created = services.organization_create(user=request.user, name=form.cleaned_data["name"])
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Organization “{created.name}” created.")
            return redirect(_organization_url(created.pk))
    return _refused(request, form_name="create", form=form)


@login_required
@require_POST
def organization_update(request, organization_id):
    organization = _organization_for(request, organization_id)
    form = OrganizationUpdateForm(request.POST)
    if form.is_valid():
        try:
            services.organization_update(actor=request.user, organization=organization, **form.cleaned_data)
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, "Organization saved.")
            return redirect(_organization_url(organization.pk))
    return _refused(request, organization.pk, form_name="update", form=form)


@login_required
@require_POST
def organization_leave(request, organization_id):
    organization = _organization_for(request, organization_id)
    try:
        services.organization_leave(user=request.user, organization=organization)
    except ApplicationError as exc:
        return _refused(request, organization.pk, message=exc.message)
    messages.success(request, f"You left “{organization.name}”.")
    return redirect("settings:organization")


@login_required
@require_POST
def invitation_create(request, organization_id):
    organization = _organization_for(request, organization_id)
    form = InvitationCreateForm(request.POST)
    if form.is_valid():
        try:
            sent, _token = services.invitation_create(
                actor=request.user, organization=organization, base_url=_base_url(request), **form.cleaned_data
            )
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Invitation sent to {sent.email}.")
            return redirect(_organization_url(organization.pk))
    return _refused(request, organization.pk, form_name="invite", form=form)


@login_required
@require_POST
def invitation_revoke(request, organization_id, invitation_id):
    organization = _organization_for(request, organization_id)
    pending = selectors.invitation_get(organization=organization, invitation_id=invitation_id)
    try:
        services.invitation_revoke(actor=request.user, invitation=pending)
    except ApplicationError as exc:
        if _is_htmx(request):  # htmx swaps no error response: show the refusal on the reloaded page
            messages.error(request, exc.message)
            return _htmx_redirect(_organization_url(organization.pk))
        return _refused(request, organization.pk, message=exc.message)
    if _is_htmx(request):
        return HttpResponse("")
    messages.success(request, f"Invitation to {pending.email} withdrawn.")
    return redirect(_organization_url(organization.pk))


@login_required
@require_POST
def membership_role(request, organization_id, membership_id):
    organization = _organization_for(request, organization_id)
    membership = selectors.membership_get(organization=organization, membership_id=membership_id)
    form = MembershipRoleForm(request.POST)
    if not form.is_valid():
        return _refused(request, organization.pk, message="Choose one of the roles.")
    try:
        changed = services.membership_role_change(actor=request.user, membership=membership, role=form.cleaned_data["role"])
    except ApplicationError as exc:
        return _refused(request, organization.pk, message=exc.message)
    # The role the service stored: it changes a copy it read again under its lock, not `membership`.
    messages.success(request, f"{membership.user.email} is now {changed.get_role_display().lower()}.")
    return redirect(_organization_url(organization.pk))


@login_required
@require_POST
def membership_remove(request, organization_id, membership_id):
    organization = _organization_for(request, organization_id)
    membership = selectors.membership_get(organization=organization, membership_id=membership_id)
    leaving = membership.user_id == request.user.pk
    try:
        services.membership_remove(actor=request.user, membership=membership)
    except ApplicationError as exc:
        return _refused(request, organization.pk, message=exc.message)
    if leaving:
        messages.success(request, f"You left “{organization.name}”.")
        return redirect("settings:organization")
    messages.success(request, f"{membership.user.email} removed from “{organization.name}”.")
    return redirect(_organization_url(organization.pk))
