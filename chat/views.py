"""Chat pages (/chat/): conversations (list with filters and search, view, rename/tag/persona, archive,
delete with confirmation), sending with the reply streamed in, and personas.

Each view parses input, calls one service or selector, renders. Another user's
conversation or persona is 404 (row-level security hides it). A send answers the reply as
server-sent events on the POST itself (static/js/chat.js reads it with fetch): the checked
and stored send exists only in this request (it holds the provider key), so it is streamed
here rather than handed to a second request; the stop button aborts the fetch and the
service keeps and meters the partial reply as `interrupted`.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors as accounts_selectors
from accounts.decorators import login_required
from chat import selectors, services
from chat.errors import SearchQueryInvalid
from chat.forms import ComposerForm, ConversationFilterForm, ConversationForm, ConversationNewForm, PersonaForm, model_split
from chat.models import Message
from chat.streaming import reply_stream_response
from config.errors import ApplicationError, NotFoundError

PAGE_SIZE = 20


def _conversation(request, conversation_id):
    try:
        return selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    except NotFoundError as exc:
        raise Http404(exc.message) from exc


def _persona(request, persona_id):
    if not persona_id:
        return None
    try:
        return selectors.persona_get(user=request.user, persona_id=persona_id)
    except NotFoundError as exc:
        raise Http404(exc.message) from exc


def _model_default(user, conversation, messages_: list[Message]) -> str:
    """The composer's model: the last reply's, else the persona's, else the user's preference."""
    for message in reversed(messages_):
        if message.role == Message.Role.ASSISTANT and message.provider:
            return f"{message.provider}/{message.model}"
    persona = conversation.persona if conversation.persona_id else None
    if persona and persona.provider and persona.model:
        return f"{persona.provider}/{persona.model}"
    preferences = accounts_selectors.preferences_get(user=user)
    return (
        f"{preferences.preferred_provider or settings.CHAT_DEFAULT_PROVIDER}/{preferences.preferred_model or settings.CHAT_DEFAULT_MODEL}"
    )


# --- Conversations -------------------------------------------------------------------


@login_required
@require_GET
def conversation_list(request):
    if request.GET.get("q"):  # "" (a cleared search box) is the list
        return _conversation_search(request, request.GET["q"])
    filters = ConversationFilterForm(request.GET)
    chosen = filters.selector_filters() if filters.is_valid() else {"archived": False}
    page = Paginator(selectors.conversation_list(user=request.user, **chosen), PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"filters": filters, "page_obj": page, "new_form": ConversationNewForm(user=request.user)}
    return render(request, "chat/conversation_list.html", context, status=200 if filters.is_valid() else 400)


def _conversation_search(request, query: str):
    """Search hits in place of the list: the whole page, or only the results for htmx (as you type)."""
    try:
        page = min(max(int(request.GET.get("page") or 1), 1), selectors.SEARCH_PAGES_MAX)
    except ValueError:
        page = 1
    context, status = {"search_q": query, "search_page": page}, 200
    try:
        context["results"] = selectors.conversation_search(user=request.user, query=query, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        if page > 1 and not context["results"].hits:  # past the last page: not "no results", as the API says
            raise Http404("No such page of results.")
    except SearchQueryInvalid as exc:
        context["search_error"], status = exc.message, 400
    if request.headers.get("HX-Request") == "true":
        return render(request, "chat/_search_results.html", context, status=status)
    context.update(filters=ConversationFilterForm(), new_form=ConversationNewForm(user=request.user))
    return render(request, "chat/conversation_list.html", context, status=status)


@login_required
@require_POST
def conversation_new(request):
    form = ConversationNewForm(request.POST, user=request.user)
    if not form.is_valid():
        messages.error(request, " ".join(e for errors in form.errors.values() for e in errors))
        return redirect("chat:list")
    conversation = services.conversation_create(user=request.user, persona=_persona(request, form.cleaned_data["persona"]))
    return redirect("chat:conversation", conversation_id=conversation.pk)


def _details_form(request, conversation) -> ConversationForm:
    initial = {"title": conversation.title, "tags": ", ".join(conversation.tags), "persona": conversation.persona_id or ""}
    return ConversationForm(user=request.user, initial=initial)


def _conversation_page(request, conversation, *, details_form=None, status: int = 200):
    history = list(selectors.message_list(conversation=conversation))
    composer = ComposerForm(initial={"model": _model_default(request.user, conversation, history)})
    details = details_form or _details_form(request, conversation)
    context = {"conversation": conversation, "history": history, "composer": composer, "details": details}
    return render(request, "chat/conversation.html", context, status=status)


def _changed(request, conversation, *, saved: str = "", details_form=None, status: int = 200):
    """After a change: HTMX swaps the conversation's header in place; a plain form reloads the page."""
    if request.headers.get("HX-Request") == "true":
        context = {"conversation": conversation, "details": details_form or _details_form(request, conversation), "saved": saved}
        return render(request, "chat/_conversation_head.html", context, status=status)
    if details_form is not None:
        return _conversation_page(request, conversation, details_form=details_form, status=status)
    messages.success(request, saved)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@login_required
@require_GET
def conversation_detail(request, conversation_id):
    return _conversation_page(request, _conversation(request, conversation_id))


@login_required
@require_POST
def conversation_update(request, conversation_id):
    conversation = _conversation(request, conversation_id)
    form = ConversationForm(request.POST, user=request.user)
    if not form.is_valid():
        return _changed(request, conversation, details_form=form, status=400)
    fields = {**form.cleaned_data, "persona": _persona(request, form.cleaned_data["persona"])}
    conversation = services.conversation_update(user=request.user, conversation=conversation, **fields)
    return _changed(request, conversation, saved="Conversation saved.")


@login_required
@require_POST
def conversation_archive(request, conversation_id):
    """The button says which state it wants (archived=1 or 0), not "flip": a double click, or a
    second tab's stale button, then leaves it as asked."""
    conversation = _conversation(request, conversation_id)
    wanted = request.POST.get("archived")
    if wanted not in ("0", "1"):
        return HttpResponseBadRequest("Say whether to archive the conversation: archived=1 or archived=0.", content_type="text/plain")
    archived = wanted == "1"
    conversation = services.conversation_update(user=request.user, conversation=conversation, is_archived=archived)
    return _changed(request, conversation, saved="Conversation archived." if archived else "Conversation restored from the archive.")


@login_required
@require_http_methods(["GET", "POST"])
def conversation_delete(request, conversation_id):
    conversation = _conversation(request, conversation_id)
    if request.method == "GET":
        return render(request, "chat/conversation_delete.html", {"conversation": conversation})
    services.conversation_delete(user=request.user, conversation=conversation)
    messages.success(request, f"“{conversation}” was deleted.")
    return redirect("chat:list")


# --- Sending -------------------------------------------------------------------------


def _refusal(request, message: str, status: int, *, upgrade: bool, retry_after: int | None = None):
    """A refused send, shown in the conversation; a refusal of the plan or its limits links to the billing page."""
    response = render(request, "chat/_refusal.html", {"message": message, "upgrade": upgrade}, status=status)
    response["X-Chat-Refusal"] = "1"  # chat.js shows this body in the conversation
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


@login_required
@require_POST
def message_send(request, conversation_id):
    form = ComposerForm(request.POST)
    if not form.is_valid():
        return _refusal(request, " ".join(e for errors in form.errors.values() for e in errors), 400, upgrade=False)
    provider, model = model_split(form.cleaned_data["model"])
    try:
        # Checked and stored in the request's short transaction; the body runs after it commits.
        pending = services.message_prepare(
            user=request.user, conversation_id=conversation_id, content=form.cleaned_data["content"], provider=provider, model=model
        )
    except ApplicationError as exc:
        return _refusal(request, exc.message, exc.status_code, upgrade=True, retry_after=exc.retry_after)
    response = reply_stream_response(pending)
    response["X-Message-Id"] = str(pending.message.pk)
    return response


# --- Personas ------------------------------------------------------------------------


def _persona_initial(persona) -> dict:
    # A persona stored with a model and no provider uses the default provider's (as its sends do).
    model = f"{persona.provider or settings.CHAT_DEFAULT_PROVIDER}/{persona.model}" if persona.model else ""
    return {
        "name": persona.name,
        "system_prompt": persona.system_prompt,
        "model": model,
        "temperature": persona.temperature,
        "response_cache": persona.response_cache,
    }


def _add_service_error(form, exc: ApplicationError) -> None:
    if isinstance(exc, NotFoundError):  # the persona was deleted in another tab: the page is gone
        raise exc
    field = exc.extra.get("field")
    form.add_error("model" if field in ("provider", "model") else None, exc.message)


@login_required
@require_http_methods(["GET", "POST"])
def persona_list(request):
    form = PersonaForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            persona = services.persona_create(user=request.user, **form.service_fields())
        except ApplicationError as exc:
            _add_service_error(form, exc)
        else:
            messages.success(request, f"Persona “{persona.name}” created.")
            return redirect("chat:personas")
    context = {"form": form, "personas": selectors.persona_list(user=request.user)}
    return render(request, "chat/personas.html", context, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def persona_edit(request, persona_id):
    persona = _persona(request, persona_id)
    form = PersonaForm(request.POST or None, initial=_persona_initial(persona))
    if request.method == "POST" and form.is_valid():
        try:
            persona = services.persona_update(user=request.user, persona=persona, **form.service_fields())
        except ApplicationError as exc:
            _add_service_error(form, exc)
        else:
            messages.success(request, f"Persona “{persona.name}” saved.")
            return redirect("chat:personas")
    return render(request, "chat/persona_edit.html", {"form": form, "persona": persona}, status=400 if form.errors else 200)


@login_required
@require_POST
def persona_delete(request, persona_id):
    persona = _persona(request, persona_id)
    services.persona_delete(user=request.user, persona=persona)
    messages.success(request, f"Persona “{persona.name}” deleted.")
    return redirect("chat:personas")
