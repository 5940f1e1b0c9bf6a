"""POST /billing/stripe/webhook: Stripe's deliveries. Answers as soon as the event is stored;
a task applies it. No session or CSRF: the signature is the authentication."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_services
from config.errors import ApplicationError


@csrf_exempt
@require_POST
def stripe_webhook(request):
    try:
        event = stripe_services.stripe_event_record(payload=request.body, signature=request.headers.get("Stripe-Signature", ""))
    except ApplicationError as exc:
        return JsonResponse({"message": exc.message, "extra": exc.extra}, status=exc.status_code)
    return JsonResponse({"received": event.event_id})
