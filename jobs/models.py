from django.conf import settings
from django.db import models


class Job(models.TextChoices):
    """Every beat job Herald runs; the value is its Celery task name."""

    GENERATE_ITEMS = "campaigns.tasks.generate_items", "Generate campaign items"
    PROCESS_MESSAGES = "campaigns.tasks.process_messages", "Process campaign messages"
    PROCESS_OUTBOUND = "campaigns.tasks.send_batch", "Process outbound email"
    MARK_COMPLETED = "campaigns.tasks.mark_completed", "Mark campaigns as completed"
    PROCESS_AUTORESPONDERS = (
        "campaigns.tasks.process_autoresponders",
        "Process autoresponder messages",
    )
    HOUSEKEEPING = "campaigns.tasks.housekeeping", "Housekeeping (prune history)"
    CHECK_JOBS = "jobs.tasks.check_jobs", "Check job health"
    PROCESS_BOUNCES = "bounces.tasks.process_bounces", "Process bounce email"
    VERIFY_SENDER_DOMAINS = "dispatchers.tasks.verify_sender_domains", "Verify sender domains"
    REFRESH_OAUTH_TOKENS = "smtpservers.tasks.refresh_oauth_tokens", "Refresh OAuth tokens"


# Jobs that take arguments are enqueued by other jobs, never by beat or by
# hand: process-messages sends one outbound task per batch it claims.
ON_DEMAND_ONLY = frozenset({Job.PROCESS_OUTBOUND})


class JobRun(models.Model):
    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        OK = "ok", "OK"
        FAILED = "failed", "Failed"

    job = models.CharField(max_length=100, choices=Job.choices, db_index=True)
    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    items_processed = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.RUNNING)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-started_at"]
        permissions = [("run_job", "Can run a job now")]
        indexes = [
            # The job manager reads the last runs of each job and filters
            # history by job or outcome, newest first, over months of runs.
            models.Index(fields=["job", "-started_at"], name="jobrun_job_started_idx"),
            models.Index(fields=["outcome", "-started_at"], name="jobrun_outcome_started_idx"),
            # Runs still going: the check for jobs running far longer than usual.
            models.Index(
                fields=["job", "started_at"],
                condition=models.Q(outcome="running"),
                name="jobrun_running_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_job_display()} at {self.started_at:%Y-%m-%d %H:%M:%S}"

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class Notification(models.Model):
    """Something an administrator or operator must look at (a dispatcher
    that paused itself, a campaign stopped by errors). One open
    notification per key: repeats update it instead of piling up."""

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    key = models.CharField(max_length=200)
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.WARNING)
    title = models.CharField(max_length=200)
    message = models.TextField(blank=True)
    # Where to fix it (the server, the dispatcher): a path inside Herald.
    link = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    occurrences = models.PositiveIntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["key"],
                condition=models.Q(resolved_at__isnull=True),
                name="notification_one_open_per_key",
            )
        ]

    def __str__(self) -> str:
        return self.title


class JobAction(models.Model):
    """Who did what from the job manager, and when: run now, a schedule
    change, a dispatcher paused or resumed by hand."""

    class Action(models.TextChoices):
        RUN_NOW = "run_now", "Run now"
        SCHEDULE = "schedule", "Change schedule"
        PAUSE_DISPATCHER = "pause_dispatcher", "Pause dispatcher"
        RESUME_DISPATCHER = "resume_dispatcher", "Resume dispatcher"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Kept apart from the user row, so the record outlives the account.
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=20, choices=Action.choices)
    target = models.CharField(max_length=200, help_text="The job or dispatcher acted on.")
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = "job manager action"

    def __str__(self) -> str:
        return f"{self.username}: {self.get_action_display()} {self.target}"


class SupportToken(models.Model):
    """Lets support staff read the troubleshooting endpoint. Only the SHA-256
    of the token is kept (shown once when made); revoking it shuts the door
    without touching anyone's login."""

    name = models.CharField(
        max_length=100, help_text="Who uses it, e.g. 'Vendor support, case 1234'."
    )
    prefix = models.CharField(max_length=12, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "troubleshooting token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
