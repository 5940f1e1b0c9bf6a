"""Chat page forms: they parse and validate input; the services decide."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.conf import settings

from chat import selectors
from chat.models import MAX_SYSTEM_PROMPT, MAX_TAG_LENGTH, MAX_TAGS, tag_composed, tags_kept, validate_one_line
from chat.porting.base import size_text

ARCHIVED_CHOICES = [("", "Active"), ("archived", "Archived"), ("all", "All")]


def model_catalog() -> list[tuple[str, str, str]]:
    """(provider, model, display name) of every model with a price in force: the only ones a message can use."""
    return [(price.provider, price.model, price.display_name) for price in selectors.model_price_list()]


def model_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    """Choices grouped by provider; the value is "provider/model"."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for provider, model, name in model_catalog():
        groups.setdefault(provider, []).append((f"{provider}/{model}", name))
    return list(groups.items())


def model_split(value: str) -> tuple[str, str]:
    provider, _, model = (value or "").partition("/")
    return provider, model


class ComposerForm(forms.Form):
    content = forms.CharField(
        label="Message",
        max_length=100_000,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Write a message… (Enter sends, Shift+Enter for a new line)"}),
        error_messages={"required": "Write a message first."},
    )
    # Offered from the catalog; whether it can be used (a price in force, the plan) is the service's call.
    model = forms.CharField(label="Model", max_length=140, widget=forms.Select)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].widget.choices = model_choices()

    def clean_model(self) -> str:
        # The list offers only "provider/model"; half a pair would be filled in with a default unasked.
        provider, model = model_split(self.cleaned_data["model"])
        if not provider or not model:
            raise forms.ValidationError("Choose a model from the list.")
        return self.cleaned_data["model"]


class ComposedTagField(forms.CharField):
    """A tag composed (tag_composed) before its length is checked, as stored and looked up."""

    def to_python(self, value):
        return tag_composed(super().to_python(value))


class ConversationFilterForm(forms.Form):
    tag = ComposedTagField(required=False, max_length=MAX_TAG_LENGTH)
    archived = forms.ChoiceField(required=False, choices=ARCHIVED_CHOICES, label="Show")

    def selector_filters(self) -> dict:
        archived = {"": False, "archived": True, "all": None}[self.cleaned_data.get("archived") or ""]
        return {"tag": (self.cleaned_data.get("tag") or "").strip(), "archived": archived}


class PersonaChoiceField(forms.ChoiceField):
    """One of the user's personas (by id), or none."""

    def __init__(self, *, user, **kwargs):
        personas = [("", "No persona")] + [(str(p.pk), p.name) for p in selectors.persona_list(user=user)]
        super().__init__(choices=personas, required=False, **kwargs)


class ConversationNewForm(forms.Form):
    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["persona"] = PersonaChoiceField(user=user, label="Persona")


class ConversationForm(forms.Form):
    """Rename, tag and choose the persona of a conversation."""

    title = forms.CharField(max_length=200, required=False, validators=[validate_one_line])
    tags = forms.CharField(required=False, help_text="Separate tags with commas.", max_length=1000, validators=[validate_one_line])

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["persona"] = PersonaChoiceField(user=user, label="Persona")

    def clean_tags(self) -> list[str]:
        tags = []
        for tag in (self.cleaned_data.get("tags") or "").split(","):
            tag = tag_composed(tag.strip())  # its length as stored
            if len(tag) > MAX_TAG_LENGTH:
                raise forms.ValidationError(f"A tag is at most {MAX_TAG_LENGTH} characters.")
            if tag:
                validate_one_line(tag)  # each tag, as the API checks them: one of zero-width spaces shows nothing
            if tag:
                tags.append(tag)
        tags = tags_kept(tags)
        if len(tags) > MAX_TAGS:
            raise forms.ValidationError(f"At most {MAX_TAGS} tags.")
        return tags


class PersonaForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_one_line])  # shown on badges and menus, as titles are
    system_prompt = forms.CharField(label="System prompt", widget=forms.Textarea(attrs={"rows": 5}), max_length=MAX_SYSTEM_PROMPT)
    model = forms.ChoiceField(label="Default model", required=False)
    temperature = forms.DecimalField(
        required=False,
        min_value=Decimal("0"),
        max_value=Decimal("2"),
        max_digits=3,
        decimal_places=2,
        help_text="0 to 2; empty: the model's default.",
    )
    response_cache = forms.BooleanField(
        label="Answer identical questions from the response cache",
        required=False,
        help_text="Only at temperature 0, and only if your plan includes the cache.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [("", "The default model"), *model_choices()]
        stored = self.initial.get("model")
        if stored and stored not in {value for _, group in choices[1:] for value, _ in group}:
            # The persona's own model, gone from the catalog since: offered (and selected) so that
            # saving the page for another change keeps it, not the first option in its place.
            choices.append((stored, f"{model_split(stored)[1]} (no longer offered)"))
        self.fields["model"].choices = choices

    def service_fields(self) -> dict:
        provider, model = model_split(self.cleaned_data["model"])
        data = {name: self.cleaned_data[name] for name in ("name", "system_prompt", "temperature", "response_cache")}
        return {**data, "provider": provider, "model": model}


class ImportForm(forms.Form):
    file = forms.FileField(
        label="Export file",
        help_text="ChatGPT's export (the ZIP as downloaded, or its conversations.json), Claude's (ZIP or conversations.json), or a Confab JSON export.",
        error_messages={"required": "Choose a file to import.", "empty": "The file is empty."},
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > settings.CHAT_IMPORT_MAX_BYTES:
            raise forms.ValidationError(f"The file is larger than the {size_text(settings.CHAT_IMPORT_MAX_BYTES)} an import may be.")
        return upload


class ExportFormatForm(forms.Form):
    format = forms.ChoiceField(choices=[("json", "JSON"), ("md", "Markdown")], required=False)
