from django import forms

from .models import Job, JobRun

MAX_INTERVAL = 7 * 86400


class JobScheduleForm(forms.Form):
    every = forms.IntegerField(
        label="Every (seconds)",
        min_value=1,
        max_value=MAX_INTERVAL,
        error_messages={
            "min_value": "The interval is at least 1 second.",
            "max_value": f"The interval is at most {MAX_INTERVAL} seconds (a week).",
            "invalid": "Give the interval as a whole number of seconds.",
            "required": "Give the interval in seconds.",
        },
    )
    enabled = forms.BooleanField(required=False)


class DispatcherPauseForm(forms.Form):
    reason = forms.CharField(max_length=255, required=False, strip=True)


class HistoryFilterForm(forms.Form):
    job = forms.ChoiceField(choices=[("", "All jobs"), *Job.choices], required=False)
    outcome = forms.ChoiceField(
        choices=[("", "All outcomes"), *JobRun.Outcome.choices], required=False
    )
    # Keyset cursors: the id of the last (or first) run of the page seen.
    before = forms.IntegerField(min_value=1, required=False, widget=forms.HiddenInput)
    after = forms.IntegerField(min_value=1, required=False, widget=forms.HiddenInput)
