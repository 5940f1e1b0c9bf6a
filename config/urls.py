from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import health, views
from config.api.views import ApiRootView

api_v1 = [path("", ApiRootView.as_view(), name="api-root"), path("", include("accounts.api_urls")), path("", include("analytics.api_urls"))]

urlpatterns = [
    path("", views.home, name="home"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("settings/", include("accounts.settings_urls")),
    path("usage/", include("analytics.urls")),
    path("billing/", include("billing.stripe_urls")),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
