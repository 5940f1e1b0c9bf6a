"""Share link pages: the public read-only page at /s/<token>/, the Share control of a
conversation (/chat/<id>/shares/), revoking, and Settings → Shared conversations (/chat/shares/).

The public page shows a conversation's title and messages and nothing of any account; it is
the same 404 for an unknown, revoked or expired link and for a signed-in non-member, and a
signed-out visitor of an organization link is sent to log in first.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST, require_safe

from accounts.decorators import login_required
from chat import selectors, sharing
from chat.models import ShareLink
from config.errors import ApplicationError, NotFoundError
from config.http import site_url

EXPIRY_CHOICES = [("", "Never"), ("1h", "In an hour"), ("1d", "In a day"), ("7d", "In a week"), ("30d", "In 30 days")]
EXPIRY = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}


class ShareLinkForm(forms.Form):
    audience = forms.ChoiceField(
        label="Who may open it", choices=ShareLink.Audience.choices, initial=ShareLink.Audience.ORGANIZATION, widget=forms.RadioSelect
    )
    expires = forms.ChoiceField(label="Expires", choices=EXPIRY_CHOICES, required=False)

    def service_fields(self) -> dict:
        expires = self.cleaned_data.get("expires")
        return {"audience": self.cleaned_data["audience"], "expires_at": timezone.now() + EXPIRY[expires] if expires else None}


def share_url(request, token: str) -> str:
    return site_url(request) + reverse("share", args=[token])


def _not_found(exc: NotFoundError):
    return Http404(exc.message)


def _conversation(request, conversation_id):
    try:
        return selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    except NotFoundError as exc:
        raise _not_found(exc) from exc


# --- The public page -----------------------------------------------------------------


@require_safe
def share_open(request, token):
    try:
        link = sharing.share_link_open(token=token)
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    if not link.permitted:
        if request.user.is_authenticated:
            raise Http404(sharing.NO_SUCH_LINK)  # a non-member learns nothing more than from an unknown link
        return redirect_to_login(request.get_full_path())
    html = sharing.share_page_cached(link_id=link.id)
    if html is None:
        try:
            shared = sharing.shared_conversation_get(token=token)
        except NotFoundError as exc:  # revoked between the two reads
            raise _not_found(exc) from exc
        html = render_to_string("chat/share_page.html", {"shared": shared})
        sharing.share_page_cache(link_id=link.id, html=html)
    response = HttpResponse(html)
    # Asked again every time (the Redis page cache saves the rendering): a revoke ends the link at
    # once, which a cache free to serve it for a while would not honour.
    visibility = "public" if link.audience == ShareLink.Audience.ANYONE else "private"
    response["Cache-Control"] = f"{visibility}, no-cache"
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response


# --- The owner's pages ---------------------------------------------------------------


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


@login_required
@require_http_methods(["GET", "POST"])
def share_conversation(request, conversation_id):
    """The Share control: HTMX loads it into the conversation page; without JavaScript it is a page of its own."""
    conversation = _conversation(request, conversation_id)
    form = ShareLinkForm(request.POST if request.method == "POST" else None)
    context = {"conversation": conversation}
    if request.method == "POST" and form.is_valid():
        try:
            link, token = sharing.share_link_create(user=request.user, conversation=conversation, **form.service_fields())
        except NotFoundError as exc:  # deleted since it was read above
            raise _not_found(exc) from None
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            # The link exists in this response only: never stored, never shown again.
            context.update({"new_link": link, "new_url": share_url(request, token)})
            form = ShareLinkForm()
    context.update({"form": form, "share_links": sharing.share_link_list(user=request.user, conversation_id=conversation.pk)})
    template = "chat/_share_links.html" if _is_htmx(request) else "chat/share_conversation.html"
    response = render(request, template, context, status=400 if form.errors else 201 if "new_url" in context else 200)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def share_revoke(request, share_link_id):
    try:
        link = sharing.share_link_get(user=request.user, share_link_id=share_link_id)
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    link = sharing.share_link_revoke(user=request.user, share_link=link)
    if _is_htmx(request):
        return render(request, "chat/_share_row.html", {"link": link})
    messages.success(request, "The link was revoked: it no longer opens.")
    back = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(back)
    return redirect("chat:shares")


@login_required
@require_GET
def share_list(request):
    return render(request, "chat/share_list.html", {"share_links": sharing.share_link_list(user=request.user)})
