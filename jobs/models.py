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
