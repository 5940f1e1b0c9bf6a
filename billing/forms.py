from django import forms

from billing.models import Subscription


class PlanChangeForm(forms.Form):
    plan = forms.SlugField(max_length=50, error_messages={"required": "Choose a plan."})
    interval = forms.ChoiceField(choices=Subscription.Interval.choices, initial=Subscription.Interval.MONTH, required=False)
    immediately = forms.BooleanField(required=False)

    def clean_interval(self):
        return self.cleaned_data.get("interval") or Subscription.Interval.MONTH
