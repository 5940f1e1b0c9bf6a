"""Import and export API (/api/v1/): an import (POST uploads the file and answers 202 at once, a
Celery task imports it; GET says its status and, once done, its report); one conversation as
JSON or Markdown; an export of everything (POST starts it, GET says its status and gives the
download link once ready; the download itself streams to the owner's API key or session).
Another user's id is 404."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors
from chat.api import CHAT_SCOPES
from chat.forms import ImportForm
from chat.models import ExportJob, ImportJob
from chat.porting import exporter, jobs
from chat.porting.views import conversation_download, export_file_response
from config.api.errors import error_responses
from config.api.inputs import validated_query
from config.api.negotiation import FirstRendererNegotiation
from config.db import rls
from config.errors import ApplicationError


class ExportFormatQuery(serializers.Serializer):
    format = serializers.ChoiceField(choices=["json", "md"], default="json")


class ExportJobOut(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = ["id", "status", "conversation_count", "size", "error", "created_at", "finished_at", "expires_at", "download_url"]

    def get_download_url(self, job) -> str | None:
        return f"/api/v1/exports/{job.pk}/download" if exporter.export_download_url(job) else None


class ConversationExportApi(APIView):
    required_scopes = CHAT_SCOPES
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(
        parameters=[ExportFormatQuery],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/markdown"): OpenApiTypes.STR,
            **error_responses(400, 401, 403, 404),
        },
    )
    def get(self, request, conversation_id):
        kind = validated_query(ExportFormatQuery, request)["format"]
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        return conversation_download(exporter.conversation_export(user=request.user, conversation=conversation, kind=kind))


@rls.own_transactions("POST")  # the job commits before its task is queued, so a queue failure is a 503 here
class ExportListApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(request=None, responses={202: ExportJobOut, **error_responses(401, 403, 409, 503)})
    def post(self, request):
        job = exporter.export_job_create(user=request.user)
        return Response(ExportJobOut(job).data, status=status.HTTP_202_ACCEPTED)


class ExportDetailApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(responses={200: ExportJobOut, **error_responses(401, 403, 404)})
    def get(self, request, export_id):
        return Response(ExportJobOut(exporter.export_job_get(user=request.user, job_id=export_id)).data)


class ExportDownloadApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY, **error_responses(401, 403, 404)})
    def get(self, request, export_id):
        return export_file_response(*exporter.export_open(user=request.user, job_id=export_id))


@extend_schema_field({"type": "string", "format": "binary", "minLength": 1, "maxLength": settings.CHAT_IMPORT_MAX_BYTES})
class ImportFileField(serializers.FileField):
    """The upload as the schema publishes it: not empty, and no larger than an import may be (ImportForm's 400s)."""


class ImportUploadIn(serializers.Serializer):
    file = ImportFileField(help_text="ChatGPT's or Claude's export (ZIP or conversations.json), or a Confab JSON export.")


class ImportJobOut(serializers.ModelSerializer):
    report = serializers.JSONField(help_text="Once done: source, imported, skipped_duplicates, messages, failed [title, reason], skipped.")

    class Meta:
        model = ImportJob
        fields = ["id", "status", "file_name", "size", "report", "error", "created_at", "started_at", "finished_at"]


@rls.own_transactions("POST")  # the job commits before its task is queued, so a queue failure is a 503 here
class ImportListApi(APIView):
    required_scopes = CHAT_SCOPES
    parser_classes = [MultiPartParser]  # the API's one form body: a file upload (every other body is JSON)

    @extend_schema(
        request={"multipart/form-data": ImportUploadIn}, responses={202: ImportJobOut, **error_responses(400, 401, 403, 409, 503)}
    )
    def post(self, request):
        form = ImportForm(data={}, files=request.FILES)
        if not form.is_valid():
            raise ApplicationError(form.errors["file"][0])
        job = jobs.import_job_create(user=request.user, upload=form.cleaned_data["file"])
        return Response(ImportJobOut(job).data, status=status.HTTP_202_ACCEPTED)


class ImportDetailApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(responses={200: ImportJobOut, **error_responses(401, 403, 404)})
    def get(self, request, import_id):
        return Response(ImportJobOut(jobs.import_job_get(user=request.user, job_id=import_id)).data)
