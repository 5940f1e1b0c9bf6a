from django import template

register = template.Library()


@register.filter
def count(value) -> str:
    """A whole number with thousands separators; an empty limit reads "Unlimited"."""
    return "Unlimited" if value is None else f"{int(value):,}"
