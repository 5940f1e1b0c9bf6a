from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from config import health, views
from config.api.views import ApiRootView

# Django's resolver tries patterns in order, and each include that does not match raises and
# lists every pattern it tried: the message path, asked on every call, goes first.
api_v1 = [path("", include("chat.api_urls")), path("", ApiRootView.as_view(), name="api-root")]
api_v1 += [path("", include("accounts.api_urls")), path("", include("analytics.api_urls")), path("", include("billing.api_urls"))]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("v1/", include("chat.gateway_urls")),  # the OpenAI-compatible gateway (chat/gateway.py)
    path("", views.home, name="home"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("settings/", include("accounts.settings_urls")),
    path("usage/", include("analytics.urls")),
    path("billing/", include("billing.urls")),
    path("chat/", include("chat.urls")),
    path("s/", include("chat.share_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up script as a file: no inline script for the CSP to refuse.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api/swagger_ui.html"), name="swagger-ui"),
]

handler400 = "config.views.bad_request"
handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
