"""Import and export pages: Settings → Import and export (/chat/porting/) accepts an export file
and answers at once (a Celery task imports it), lists the recent imports with their reports
(a fragment the page polls while one is running), starts an export of everything and lists the
downloads; a conversation's page downloads it as JSON or Markdown."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.decorators import login_required
from chat import selectors
from chat.forms import ExportFormatForm, ImportForm
from chat.porting import exporter, jobs
from config.db import rls
from config.downloads import file_download_response
from config.errors import ApplicationError, NotFoundError


@rls.own_transactions("POST")  # the job commits before its task is queued, so a queue failure is known here
@login_required
@require_http_methods(["GET", "POST"])
def porting(request):
    form = ImportForm(request.POST, request.FILES) if request.method == "POST" else ImportForm()
    if request.method == "POST" and form.is_valid():
        try:
            job = jobs.import_job_create(user=request.user, upload=form.cleaned_data["file"])
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Importing {job.file_name}… its report appears below when it is done.")
        return redirect("chat:porting")
    with rls.atomic_as(request.user.pk):  # a POST holds no request transaction (own_transactions)
        context = {
            "form": form,
            **_imports(request.user),
            "jobs": [(job, exporter.export_download_url(job)) for job in exporter.export_job_list(user=request.user)],
        }
        return render(request, "chat/porting.html", context, status=400 if form.errors else 200)


@login_required
@require_GET
def import_list(request):
    """The recent imports alone: the page polls this while one is pending or running."""
    return render(request, "chat/porting_imports.html", _imports(request.user))


def _imports(user) -> dict:
    imports = jobs.import_job_list(user=user)
    return {"imports": imports, "importing": any(job.status in jobs.ACTIVE for job, _ in imports)}


@rls.own_transactions("POST")  # the job commits before its task is queued, so a queue failure is known here
@login_required
@require_POST
def export_start(request):
    try:
        exporter.export_job_create(user=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Your export is being prepared; its download link appears below when it is ready.")
    return redirect("chat:porting")


@login_required
@require_GET
def export_download(request, token):
    try:
        job, file = exporter.export_file(user=request.user, token=token)
    except NotFoundError as exc:
        raise Http404(exc.message) from exc
    return export_file_response(job, file)


def export_file_response(job, file) -> StreamingHttpResponse:
    """The zip, streamed from its open file (never read whole)."""
    return file_download_response(file, filename=f"confab-export-{job.created_at:%Y-%m-%d}.zip", content_type="application/zip")


@login_required
@require_GET
def conversation_export(request, conversation_id):
    form = ExportFormatForm(request.GET)
    if not form.is_valid():
        return HttpResponse("Choose format=json or format=md.", status=400, content_type="text/plain")
    try:
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    except NotFoundError as exc:
        raise Http404(exc.message) from exc
    return conversation_download(
        exporter.conversation_export(user=request.user, conversation=conversation, kind=form.cleaned_data["format"] or "json")
    )


def conversation_download(exported: tuple[str, str]) -> HttpResponse:
    name, text = exported
    content_type = "text/markdown; charset=utf-8" if name.endswith(".md") else "application/json"
    return HttpResponse(text, content_type=content_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})
