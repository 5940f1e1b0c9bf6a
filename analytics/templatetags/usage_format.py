"""How usage figures read on pages: tokens with thousands separators, dollars, shares."""

from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def tokens(value) -> str:
    """1234567 -> "1,234,567"."""
    return f"{int(value or 0):,}"


@register.filter
def usd(value) -> str:
    """Dollars to the cent; amounts under a cent keep four places so they do not read as $0.00."""
    amount = Decimal(value or 0)
    if amount and abs(amount) < Decimal("0.01"):
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


@register.filter
def share(value) -> str:
    """0.0123 -> "1.23%"."""
    return f"{float(value or 0) * 100:.2f}%"
