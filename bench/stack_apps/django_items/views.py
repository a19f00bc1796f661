import json

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from bench.stack_apps.django_items.models import Item


@require_GET
def read(request: HttpRequest, item_id: int) -> HttpResponse:
    try:
        item = Item.objects.get(pk=item_id)
    except Item.DoesNotExist:
        raise Http404("No such item.") from None
    return JsonResponse({"id": item.id, "name": item.name})


@require_POST
def write(request: HttpRequest) -> HttpResponse:
    data = json.loads(request.body)
    item = Item.objects.create(name=data["name"])
    return JsonResponse({"id": item.id, "name": item.name}, status=201)


@require_GET
def nodb(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("items/<int:item_id>", read),
    path("items", write),
    path("nodb", nodb),
]
