"""CSV import of contacts and suppressions: every kind of bad row reported
with its row number and reason, upserts by email, list subscriptions, the
browser flow, and permissions per role."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from accounts.services import user_create
from campaigns import imports
from campaigns.models import Contact, ContactList, ImportJob, Subscription, Suppression

pytestmark = pytest.mark.django_db

# Every kind of bad row, a UTF-8 BOM, CRLF line ends, quoted fields with
# commas and line breaks, and a blank line (row 10).
BAD_ROWS_CSV = (
    "\ufeffEmail,Phone,First name,Last name,Time zone,Notes,Score,VIP,Birthday\r\n"
    "jane@example.org,+44 20 7946 0958,Jane,Doe,Europe/London,"
    '"Likes cats, dogs",42,true,1990-05-17\r\n'
    "not-an-address,,=HYPERLINK(1),,,,,,\r\n"
    "bob@example.org,12345,Bob,,,,,,\r\n"
    "JANE@Example.org,,Janet,,,,,,\r\n"
    ",+15551234567,Nobody,,,,,,\r\n"
    'eve@example.org,,"Eve\r\nBcc: x@evil.example",,,,,,\r\n'
    "carl@example.org,,Carl,,Mars/Olympus,,,,\r\n"
    '"dan@example.org",,"Dan, Jr.",,,"Line one\nLine two",3.5,no,2024-02-30\r\n'
    "\r\n"
    "Erin@Example.org,0044 20 7946 0959,Erin,,,,007,FALSE,\r\n"
)

EXPECTED_REJECTIONS = [
    ["3", "invalid address: An email address must have an @-sign."],
    ["4", "invalid phone: '12345' is not an international number (e.g. +44 20 7946 0958)"],
    ["5", "duplicate in file (same address as row 2)"],
    ["6", "missing required field: email"],
    ["7", "header-injection characters in first name"],
    ["8", "invalid time zone: 'Mars/Olympus' (use a name such as Europe/Paris)"],
]

MAPPING = [
    {"field": "email", "name": ""},
    {"field": "phone", "name": ""},
    {"field": "first_name", "name": ""},
    {"field": "last_name", "name": ""},
    {"field": "time_zone", "name": ""},
    {"field": "attribute", "name": "notes"},
    {"field": "attribute", "name": "score"},
    {"field": "attribute", "name": "vip"},
    {"field": "attribute", "name": "birthday"},
]


@pytest.fixture(autouse=True)
def var_dir(settings: Any, tmp_path: Path) -> Path:
    settings.VAR_DIR = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return tmp_path


@pytest.fixture
def eager() -> Iterator[None]:
    """Tasks run where they are enqueued (the worker test below runs a real one)."""
    current_app.conf.task_always_eager = True
    try:
        yield
    finally:
        current_app.conf.task_always_eager = False


def upload(content: str | bytes, *, kind: str = ImportJob.Kind.CONTACTS) -> ImportJob:
    data = content.encode() if isinstance(content, str) else content
    return imports.import_upload(
        kind=kind, uploaded=SimpleUploadedFile("people.csv", data, "text/csv"), user=None
    )


def run(
    content: str,
    mapping: list[dict[str, str]] | None = None,
    *,
    kind: str = ImportJob.Kind.CONTACTS,
    chunk_rows: int = 1000,
    contact_list: ContactList | None = None,
    source: str = "",
) -> ImportJob:
    job = upload(content, kind=kind)
    imports.import_start(
        job=job,
        mapping=mapping or imports.import_mapping_guess(job=job),
        contact_list=contact_list,
        source=source,
    )
    result = imports.import_run(job_id=job.pk, chunk_rows=chunk_rows)
    assert result is not None
    return result


def report(job: ImportJob) -> list[list[str]]:
    with imports.report_path(job).open(newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("chunk_rows", [1000, 2], ids=["one-chunk", "chunks-of-2"])
def test_it_reports_every_kind_of_bad_row(chunk_rows: int) -> None:
    job = run(BAD_ROWS_CSV, MAPPING, chunk_rows=chunk_rows)

    assert job.status == ImportJob.Status.DONE, job.error
    assert (job.rows_read, job.imported, job.created, job.updated, job.rejected) == (9, 3, 3, 0, 6)
    rows = report(job)
    assert rows[0][:2] == ["row", "reason"]
    assert rows[0][2:] == ["Email", "Phone", "First name", "Last name", "Time zone", "Notes",
                           "Score", "VIP", "Birthday"]  # fmt: skip
    assert [r[:2] for r in rows[1:]] == EXPECTED_REJECTIONS
    # The report carries the original cells, a formula defused.
    assert rows[1][2:5] == ["not-an-address", "", "'=HYPERLINK(1)"]
    assert rows[5][4] == "Eve\r\nBcc: x@evil.example"
    assert job.percent == 100
    assert not imports.source_path(job).exists()


def test_good_rows_are_imported_with_typed_attributes() -> None:
    run(BAD_ROWS_CSV, MAPPING)

    contacts = {c.email: c for c in Contact.objects.all()}
    assert sorted(contacts) == ["dan@example.org", "erin@example.org", "jane@example.org"]
    jane = contacts["jane@example.org"]
    assert (jane.first_name, jane.last_name, jane.phone, jane.time_zone) == (
        "Jane",
        "Doe",
        "+442079460958",
        "Europe/London",
    )
    assert jane.attributes == {
        "notes": "Likes cats, dogs",
        "score": 42,
        "vip": True,
        "birthday": "1990-05-17",
    }
    assert contacts["dan@example.org"].first_name == "Dan, Jr."
    assert contacts["dan@example.org"].attributes == {
        "notes": "Line one\nLine two",
        "score": 3.5,
        "vip": "no",
        "birthday": "2024-02-30",
    }
    erin = contacts["erin@example.org"]
    assert erin.phone == "+442079460959"
    assert erin.attributes == {"score": "007", "vip": False}
    assert jane.source == "CSV import: people.csv"
    assert jane.status == Contact.Status.ACTIVE


def test_it_upserts_by_email_whatever_the_case() -> None:
    existing = Contact.objects.create(
        email="jane@example.org",
        first_name="J.",
        phone="+15550000000",
        status=Contact.Status.UNSUBSCRIBED,
        attributes={"plan": "gold", "score": 1},
    )
    job = run("email,first_name,phone,score\nJANE@EXAMPLE.ORG,Jane,,7\nnew@example.org,New,,\n")

    assert (job.imported, job.created, job.updated) == (2, 1, 1)
    assert Contact.objects.count() == 2
    existing.refresh_from_db()
    assert existing.first_name == "Jane"
    assert existing.phone == "+15550000000", "an empty cell keeps what Herald has"
    assert existing.attributes == {"plan": "gold", "score": 7}
    assert existing.status == Contact.Status.UNSUBSCRIBED, "an import never resubscribes"


def test_importing_the_same_file_again_changes_nothing() -> None:
    contact_list = ContactList.objects.create(name="Fair")
    first = run(BAD_ROWS_CSV, MAPPING, contact_list=contact_list)
    before = list(Contact.objects.order_by("email").values())

    again = run(BAD_ROWS_CSV, MAPPING, contact_list=contact_list)

    assert (first.created, first.updated) == (3, 0)
    assert (again.imported, again.created, again.updated, again.rejected) == (3, 0, 0, 6)
    assert list(Contact.objects.order_by("email").values()) == before
    assert Subscription.objects.count() == 3


def test_it_subscribes_the_good_rows_to_the_list_recording_the_source() -> None:
    contact_list = ContactList.objects.create(name="Trade fair")
    already = Contact.objects.create(email="dan@example.org")
    Subscription.objects.create(contact=already, contact_list=contact_list, source="web form")

    run(BAD_ROWS_CSV, MAPPING, contact_list=contact_list, source="Fair sign-up sheet, May")

    subscriptions = {
        s.contact.email: s.source for s in Subscription.objects.select_related("contact")
    }
    assert subscriptions == {
        "jane@example.org": "Fair sign-up sheet, May",
        "erin@example.org": "Fair sign-up sheet, May",
        "dan@example.org": "web form",
    }
    assert Contact.objects.get(email="jane@example.org").source == "Fair sign-up sheet, May"


@pytest.mark.parametrize("chunk_rows", [1000, 2], ids=["one-chunk", "chunks-of-2"])
def test_an_import_does_not_put_back_a_contact_who_left_the_list(
    chunk_rows: int, client: Client
) -> None:
    contact_list = ContactList.objects.create(name="Trade fair")
    left_at = timezone.now() - timedelta(days=3)
    for email in ("dan@example.org", "erin@example.org"):
        Subscription.objects.create(
            contact=Contact.objects.create(email=email),
            contact_list=contact_list,
            source="web form",
            unsubscribed_at=left_at,
            unsubscribed_via=Subscription.Via.PREFERENCES,
        )

    job = run(BAD_ROWS_CSV, MAPPING, contact_list=contact_list, chunk_rows=chunk_rows)

    assert (job.imported, job.kept_unsubscribed) == (3, 2)
    on_list = Subscription.objects.filter(contact_list=contact_list, unsubscribed_at=None)
    assert list(on_list.values_list("contact__email", flat=True)) == ["jane@example.org"]
    kept = Subscription.objects.get(contact__email="dan@example.org")
    assert (kept.unsubscribed_at, kept.source) == (left_at, "web form")  # the record, untouched
    assert Contact.objects.get(email="dan@example.org").first_name == "Dan, Jr."  # still updated

    login(client, MARKETER)
    page = client.get(reverse("campaigns:import_detail", args=[job.pk])).content.decode()
    assert "2</span> contact(s) had unsubscribed from this list and were not re-added." in page


def test_an_exported_file_imports_back_unchanged() -> None:
    from campaigns import exports

    Contact.objects.create(
        email="x@example.org", first_name="=cmd", phone="+15551234567", attributes={"n": -5}
    )
    lines = "".join(exports.csv_lines(exports.contacts_export_rows(contacts=Contact.objects)))
    Contact.objects.all().delete()

    job = run(lines)

    assert job.rejected == 0, report(job)
    contact = Contact.objects.get()
    assert (contact.first_name, contact.phone, contact.attributes) == (
        "=cmd",
        "+15551234567",
        {"n": -5},
    )


def test_every_later_row_with_an_address_is_rejected_naming_an_earlier_one() -> None:
    job = run(
        "email,first_name\n"
        "a@example.org,First\nb@example.org,B\n"  # chunk 1
        "A@EXAMPLE.ORG,Second\na@example.org,Third\n"  # chunk 2
        "c@example.org,C\nb@example.org,B again\n",  # chunk 3
        chunk_rows=2,
    )

    assert [r[:2] for r in report(job)[1:]] == [
        ["4", "duplicate in file (same address as row 2)"],
        ["5", "duplicate in file (same address as row 4)"],
        ["7", "duplicate in file (same address as row 3)"],
    ]
    assert (job.imported, job.rejected) == (3, 3)
    assert Contact.objects.get(email="a@example.org").first_name == "First"


def test_a_nul_character_rejects_its_row_not_the_import() -> None:
    job = run("email,notes\na@example.org,ok\nb@example.org,x\x00y\n")

    assert job.status == ImportJob.Status.DONE, job.error
    assert [r[:2] for r in report(job)[1:]] == [["3", "NUL character in custom attribute notes"]]
    assert list(Contact.objects.values_list("email", flat=True)) == ["a@example.org"]


def test_a_language_code_too_long_to_store_rejects_its_row_not_the_import() -> None:
    job = run("email,language\na@example.org,pt-BR\nb@example.org,en-abcdefgh-abcdefgh\n")

    assert job.status == ImportJob.Status.DONE, job.error
    assert [r[:2] for r in report(job)[1:]] == [
        ["3", "invalid language: 'en-abcdefgh-abcdefgh' (use a code such as en or pt-BR)"]
    ]
    assert Contact.objects.get().language == "pt-BR"


# Addresses the import judges without email-validator's full parse when they
# look plain, and some that only look so.
ADDRESSES = [
    "jane@example.org",
    "Jane.Doe+news@Mail.Example.ORG",
    "Info@Example.org",
    "o'brien@example.org",
    "a@b@example.org",
    "a@@example.org",
    ".a@example.org",
    "a.@example.org",
    "a..b@example.org",
    "a@example",
    "a@localhost",
    "a@host.test",
    "a@host.invalid",
    "a@-host.example.org",
    "a@host-.example.org",
    "a@host..example.org",
    "a@example.org.",
    "a@example.123",
    "a@192.0.2.1",
    "a@[192.0.2.1]",
    "a@exa_mple.org",
    "a@example.org:25",
    "a b@example.org",
    '"a b"@example.org',
    "Jane <jane@example.org>",
    "jane@exämple.org",
    "jane@xn--exmple-cua.org",
    "josé@example.org",
    "x" * 64 + "@example.org",
    "x" * 65 + "@example.org",
    "x" * 242 + "@example.org",
    "x" * 243 + "@example.org",
    "x" * 235 + "@xn--exmple-cua.org",
    "a@" + "b" * 64 + ".example.org",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_an_address_is_judged_as_email_validator_judges_it(address: str) -> None:
    from email_validator import EmailNotValidError, validate_email

    try:
        expected = validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        expected = f"invalid address: {exc}"
    for _ in range(2):  # the second time, its domain's verdict comes from the cache
        try:
            judged = imports.normalise_email(address)
        except imports.RowRejected as exc:
            judged = str(exc)
        assert judged == expected


def test_a_semicolon_separated_file_is_read() -> None:
    job = run("email;first_name\na@example.org;Ann\n")
    assert (job.imported, job.rejected) == (1, 0)
    assert Contact.objects.get().first_name == "Ann"


def test_a_row_longer_than_the_header_is_rejected() -> None:
    job = run("email,first_name\na@example.org,Ann,surprise\nb@example.org,Bo,\n")
    assert [r[:2] for r in report(job)[1:]] == [
        ["2", "the row has more columns than the header (3 > 2)"]
    ]
    assert job.imported == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"email\n" + "café@example.org\n".encode("latin-1"), "not UTF-8"),
        (b"", "first row must name the columns"),
        (b"\n\n", "first row must name the columns"),
    ],
    ids=["latin-1", "empty", "blank"],
)
def test_an_unreadable_file_is_refused_on_upload(
    content: bytes, message: str, var_dir: Path
) -> None:
    with pytest.raises(ValidationError, match=message):
        upload(content)
    assert ImportJob.objects.count() == 0
    assert list((var_dir / "imports").iterdir()) == []


def test_a_file_broken_mid_way_fails_with_its_row_number(settings: Any) -> None:
    settings.DEBUG = False
    csv.field_size_limit(100)
    try:
        job = run('email,notes\na@example.org,ok\nb@example.org,"' + "x" * 200 + '"\n')
    finally:
        csv.field_size_limit(131072)
    assert job.status == ImportJob.Status.FAILED
    assert job.error.startswith("Row 3 could not be read as CSV")
    assert job.imported == 0


@pytest.mark.parametrize(
    "mapping, message",
    [
        ([{"field": "first_name"}, {"field": "ignore"}], "Choose the column that holds the email"),
        ([{"field": "email"}, {"field": "email"}], "Email is mapped to more than one column"),
        ([{"field": "email"}, {"field": "attribute", "name": "2x"}], "Custom attribute name"),
    ],
)
def test_a_bad_mapping_is_refused(mapping: list[dict[str, str]], message: str) -> None:
    job = upload("email,other\na@example.org,1\n")
    with pytest.raises(ValidationError, match=message):
        imports.import_start(job=job, mapping=mapping)
    job.refresh_from_db()
    assert job.status == ImportJob.Status.UPLOADED


def test_an_import_runs_once_however_often_it_is_run() -> None:
    job = run("email\na@example.org\n")
    assert imports.import_run(job_id=job.pk) is None
    assert ImportJob.objects.get(pk=job.pk).imported == 1


# --- Suppressions ---------------------------------------------------------------

SUPPRESSIONS_CSV = (
    "address,reason\r\n"
    "Spam@Example.org,complained by phone\r\n"
    "*@Blocked.Example,competitor\r\n"
    "*@,nothing\r\n"
    "example.net,bare domain\r\n"
    "spam@example.org,again\r\n"
    ",no address\r\n"
    "bad address@example.org,\r\n"
)


def test_suppressions_import_reports_invalid_rows() -> None:
    Suppression.objects.create(pattern="old@example.org", reason="")
    job = run(SUPPRESSIONS_CSV + "old@example.org,moved away\r\n", kind="suppressions")

    assert (job.rows_read, job.imported, job.created, job.updated, job.rejected) == (8, 3, 2, 1, 5)
    assert [r[:2] for r in report(job)[1:]] == [
        ["4", "invalid domain: There must be something after the @-sign."],
        ["5", "invalid address: to suppress a whole domain write *@example.net"],
        ["6", "duplicate in file (same address as row 2)"],
        ["7", "missing required field: address or *@domain"],
        ["8", "invalid address: The email address contains invalid characters before the "
              "@-sign: SPACE."],
    ]  # fmt: skip
    assert dict(Suppression.objects.values_list("pattern", "reason")) == {
        "spam@example.org": "complained by phone",
        "*@blocked.example": "competitor",
        "old@example.org": "moved away",
    }
    assert set(Suppression.objects.values_list("source", flat=True)) == {"manual"}


# --- In the browser -------------------------------------------------------------


def login(client: Client, role: str) -> Client:
    user = user_create(
        username=role.lower(), email=f"{role.lower()}@example.org", password="x", role=role
    )
    client.force_login(user)
    return client


def test_a_marketer_imports_a_file_in_the_browser(
    client: Client, eager: None, django_capture_on_commit_callbacks: Any
) -> None:
    login(client, MARKETER)
    contact_list = ContactList.objects.create(name="Customers")
    file = SimpleUploadedFile("people.csv", BAD_ROWS_CSV.encode(), "text/csv")

    response = client.post(reverse("campaigns:contact_import"), {"file": file})
    assert response.status_code == 302
    job = ImportJob.objects.get()
    assert response["Location"] == reverse("campaigns:import_detail", args=[job.pk])
    assert job.created_by.username == "marketer"

    page = client.get(response["Location"]).content.decode()
    assert "Map the columns of people.csv" in page
    assert "Likes cats, dogs" in page  # a sample value
    assert '<option value="attribute" selected>' in page  # Notes guessed as an attribute

    form = {f"field_{i}": m["field"] for i, m in enumerate(MAPPING)}
    form.update({f"name_{i}": m["name"] for i, m in enumerate(MAPPING)})
    form.update(contact_list=contact_list.pk, source="")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("campaigns:import_detail", args=[job.pk]), form)
    assert response.status_code == 302

    progress = client.get(reverse("campaigns:import_progress", args=[job.pk])).json()
    assert progress["status"] == "done"
    assert (progress["rows_read"], progress["imported"], progress["rejected"]) == (9, 3, 6)
    assert progress["percent"] == 100
    page = client.get(reverse("campaigns:import_detail", args=[job.pk])).content.decode()
    assert "invalid time zone: &#x27;Mars/Olympus&#x27;" in page
    assert "Download all 6 as CSV" in page
    download = client.get(reverse("campaigns:import_report", args=[job.pk]))
    assert download["Content-Disposition"] == 'attachment; filename="people-rejected.csv"'
    lines = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert [r[:2] for r in lines[1:]] == EXPECTED_REJECTIONS
    assert Subscription.objects.filter(contact_list=contact_list).count() == 3
    assert Subscription.objects.first().source == "CSV import: people.csv"


def test_the_mapping_page_explains_a_bad_mapping(client: Client) -> None:
    login(client, MARKETER)
    job = upload("email,name\na@example.org,A\n")
    response = client.post(
        reverse("campaigns:import_detail", args=[job.pk]),
        {"field_0": "ignore", "name_0": "", "field_1": "first_name", "name_1": ""},
    )
    assert response.status_code == 400
    assert "Choose the column that holds the email." in response.content.decode()
    assert ImportJob.objects.get().status == ImportJob.Status.UPLOADED


def test_an_upload_that_is_not_utf8_is_answered_clearly(client: Client) -> None:
    login(client, MARKETER)
    file = SimpleUploadedFile("people.csv", "email\nrené@example.org\n".encode("cp1252"))
    response = client.post(reverse("campaigns:suppression_import"), {"file": file})
    assert response.status_code == 400
    assert "Save it as “CSV UTF-8”" in response.content.decode()


def test_the_upload_is_stored_under_var_imports(var_dir: Path) -> None:
    job = upload("email\na@example.org\n")
    assert imports.source_path(job).parent == var_dir / "imports"
    assert imports.source_path(job).read_text() == "email\na@example.org\n"


@pytest.mark.parametrize(
    "role, contacts, suppressions",
    [(MARKETER, 200, 200), (OPERATOR, 403, 403), (ADMINISTRATOR, 200, 200)],
)
def test_import_pages_per_role(client: Client, role: str, contacts: int, suppressions: int) -> None:
    job = upload("email\na@example.org\n")
    login(client, role)
    assert client.get(reverse("campaigns:contact_import")).status_code == contacts
    assert client.get(reverse("campaigns:suppression_import")).status_code == suppressions
    assert client.get(reverse("campaigns:import_detail", args=[job.pk])).status_code == contacts
    progress = client.get(reverse("campaigns:import_progress", args=[job.pk]))
    assert progress.status_code == contacts


def test_a_user_without_suppression_rights_cannot_import_suppressions(client: Client) -> None:
    login(client, OPERATOR)
    operator = User.objects.get(username="operator")
    operator.user_permissions.add(Permission.objects.get(codename="add_contact"))
    job = upload("address\nx@example.org\n", kind="suppressions")
    assert client.get(reverse("campaigns:contact_import")).status_code == 200
    assert client.get(reverse("campaigns:suppression_import")).status_code == 403
    assert client.get(reverse("campaigns:import_detail", args=[job.pk])).status_code == 403


def test_anonymous_users_are_sent_to_log_in(client: Client) -> None:
    response = client.get(reverse("campaigns:contact_import"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_contact_list_offers_import_and_export_to_a_marketer(client: Client) -> None:
    login(client, MARKETER)
    page = client.get(reverse("admin:campaigns_contact_changelist") + "?status__exact=active")
    html = page.content.decode()
    assert f'href="{reverse("campaigns:contact_import")}"' in html
    assert f'href="{reverse("campaigns:contact_export")}?status=active"' in html
    html = client.get(reverse("admin:campaigns_suppression_changelist")).content.decode()
    assert f'href="{reverse("campaigns:suppression_import")}"' in html
    assert f'href="{reverse("campaigns:suppression_export")}"' in html


# --- With a real worker -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_real_worker_runs_the_import_task(
    tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    from campaigns.import_tasks import import_run
    from tests.workers import JOB_QUEUE, celery_env, running, start_worker, wait_for

    job = upload("email,first_name\na@example.org,Ann\nbad,Bo\n")
    with django_capture_on_commit_callbacks(execute=False):
        imports.import_start(job=job, mapping=imports.import_mapping_guess(job=job))
    log = tmp_path / "importworker.log"
    worker = start_worker([JOB_QUEUE], log, celery_env(HERALD_VAR_DIR=str(tmp_path)), 1)
    with running(worker):
        import_run.apply_async((job.pk,), queue=JOB_QUEUE)
        wait_for(
            lambda: ImportJob.objects.get(pk=job.pk).status == ImportJob.Status.DONE,
            timeout=60,
            what="the import to finish",
            logs=[log],
        )
    job.refresh_from_db()
    assert (job.imported, job.rejected) == (1, 1)
    assert Contact.objects.get().first_name == "Ann"
