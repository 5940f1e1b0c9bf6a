"""How usage figures read on pages: tokens with thousands separators, dollars, shares."""

from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def tokens(value) -> str:
    """1234567 -> "1,234,567"."""
    return f"{int(value or 0):,}"


FOUR_PLACES = Decimal("0.0001")


@register.filter
def usd(value) -> str:
    """Dollars to the cent; amounts under a cent keep four places so they do not read as $0.00,
    and those that four places would round to zero show down to their first significant digit
    ($0.000003): an amount that is not zero never reads as one."""
    amount = Decimal(value or 0)
    if amount and abs(amount) < Decimal("0.01"):
        if amount.quantize(FOUR_PLACES) == 0:  # rounded to its first significant digit instead
            return f"${amount.quantize(Decimal(1).scaleb(amount.adjusted())).normalize():f}"
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


@register.filter
def share(value) -> str:
    """0.0123 -> "1.23%"."""
    return f"{float(value or 0) * 100:.2f}%"
