"""The PDF archiver: every order version's PDF on disk before its one-hour link expires.

Jobs are taken earliest deadline first, ``[pdfs] concurrency`` at a time. A PDF is
streamed (memory stays flat whatever its size) into a temporary file inside the pdf
dir, hashed on the way, checked (``%PDF-`` at the start, ``%%EOF`` at the end, at most
``max_bytes``), fsynced, and renamed into ``<connection>/<order id>/<sha256>.pdf`` —
names never come from server text, and identical content is stored once. The rename is
made durable (the directory fsynced, and the parent of any directory just created)
before the job's ``pdf_archived`` commits. The download client carries no Authorization
header and follows redirects only within the link's own origin, so the bearer token
never leaves the API origin.

What to do after a failed download is decided by :func:`after_failure` (pure).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from syncd.api import parse_retry_after, tls_context
from syncd.backoff import full_jitter
from syncd.logging import get_logger, redact
from syncd.store import pdf_jobs
from syncd.store.database import Database, database_outage, make_private_dir
from syncd.store.pdf_jobs import PdfJob

# Start the disk write of every this many bytes while the rest arrives (Linux), so the
# fsync at the end waits for about one window instead of the whole file; the written
# pages also leave the page cache instead of crowding it.
WRITEBACK_WINDOW = 1 << 20
DOWNLOAD_TIMEOUT_SECONDS = 600.0  # one PDF, start to end
MAX_REDIRECTS = 5
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".part"
PDF_MAGIC = b"%PDF-"
PDF_TRAILER = b"%%EOF"
TRAILER_WINDOW = 1024  # %%EOF must stand within the last KiB


# --- outcomes of one download, and what each means ------------------------------------


class DownloadCancelled(Exception):
    """The archiver is stopping; the partial download was removed."""


class DownloadFailed(Exception):
    """One download did not yield an archivable PDF."""

    def __init__(
        self, message: str, *, reason: str, kind: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason  # the pdf_failed reason if it comes to that
        self.kind = kind  # "retry" | "final" | "link_dead"
        self.retry_after = retry_after


@dataclass(frozen=True)
class Decision:
    action: str  # "retry" | "fail" | "wait_for_link"
    delay: float = 0.0
    reason: str = ""


def after_failure(
    failure: DownloadFailed,
    attempts: int,
    *,
    max_attempts: int,
    retry_after_max: float,
    rand: Callable[[], float],
) -> Decision:
    """What to do after the ``attempts``-th failed download of a job.

    A dead link waits for the next poll's link; a final failure (too large, 404) fails
    the job; a body that is not a PDF is retried ``max_attempts`` times, then fails;
    transient trouble (5xx, 429, resets, timeouts) is retried with backoff until the
    link's deadline, because the PDF may still come.
    """
    if failure.kind == "link_dead":
        return Decision("wait_for_link")
    if failure.kind == "final":
        return Decision("fail", reason=failure.reason)
    if failure.reason == "not_pdf" and attempts >= max_attempts:
        return Decision("fail", reason="not_pdf")
    delay = full_jitter(attempts, BACKOFF_BASE, BACKOFF_MAX, rand)
    if failure.retry_after is not None:
        delay = min(max(delay, failure.retry_after), retry_after_max)
    return Decision("retry", delay=delay)


# --- one download ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPdf:
    sha256: str
    size: int
    path: str  # relative to the pdf dir


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or ""), parts.port


def link_refusal(url: str) -> str | None:
    """Why a PDF link must not be fetched, or None (pure).

    Only http(s); no credentials in the link (httpx would send them as Basic auth); no
    link-local, multicast or unspecified address (cloud metadata endpoints live at
    169.254.169.254: a hostile upstream must not make syncd fetch them).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "not an http(s) link"
    if parts.username is not None or parts.password is not None:
        return "the link carries credentials"
    try:
        address = ipaddress.ip_address((parts.hostname or "").strip("[]"))
    except ValueError:
        return None if parts.hostname else "the link has no host"
    if address.is_link_local or address.is_multicast or address.is_unspecified:
        return "the link points at a link-local, multicast or unspecified address"
    return None


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}{TEMP_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(pdf_dir: Path, relative_dir: str) -> list[Path]:
    """Create ``pdf_dir/relative_dir`` as needed (0700); return the directories that
    gained an entry (the parent of each one created), which need an fsync too."""
    changed = []
    path = pdf_dir
    for part in Path(relative_dir).parts:
        child = path / part
        try:
            child.mkdir(mode=0o700)
        except FileExistsError:
            pass
        else:
            changed.append(path)
        path = child
    return changed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _start_writeback(fd: int, offset: int) -> None:
    """Have the kernel start writing the file's dirty pages from ``offset`` on without
    waiting for them (on Linux POSIX_FADV_DONTNEED starts the writeback, then drops the
    pages already clean). Only a hint: where it is missing or refused, the fsync at the
    end does all the work, as it would anyway."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_DONTNEED)


def _open_response(http: httpx.Client, url: str) -> httpx.Response:
    """GET ``url`` following redirects only within its origin; the caller closes it."""
    origin = _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        response = http.send(http.build_request("GET", url), stream=True)
        if not response.is_redirect:
            return response
        response.close()
        location = response.headers.get("location", "")
        url = str(response.url.join(location))
        if _origin(url) != origin:
            raise DownloadFailed("redirected to another origin", reason="redirect", kind="final")
    raise DownloadFailed("too many redirects", reason="redirect", kind="final")


def _check_status(response: httpx.Response, now: datetime) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in (403, 410):
        raise DownloadFailed(f"link expired (HTTP {status})", reason="expired", kind="link_dead")
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        raise DownloadFailed(
            f"PDF host error (HTTP {status})",
            reason=f"http_{status}",
            kind="retry",
            retry_after=retry_after,
        )
    raise DownloadFailed(f"HTTP {status}", reason=f"http_{status}", kind="final")


def download_pdf(
    http: httpx.Client,
    url: str,
    pdf_dir: Path,
    relative_dir: str,
    *,
    max_bytes: int,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    cancelled: Callable[[], bool] = lambda: False,
) -> StoredPdf:
    """Stream one PDF into ``pdf_dir/relative_dir/<sha256>.pdf``; raise DownloadFailed."""
    refusal = link_refusal(url)
    if refusal is not None:
        raise DownloadFailed(refusal, reason="invalid_url", kind="final")
    temp = pdf_dir / _temp_name()
    digest = hashlib.sha256()
    size = 0
    submitted = 0  # bytes whose writeback has been started
    dropped = 0  # and before this offset, also dropped from the page cache (once clean)
    head = b""
    tail = b""
    try:
        with contextlib.ExitStack() as stack:
            response = _open_response(http, url)
            stack.callback(response.close)
            _check_status(response, datetime.now(UTC))
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            stack.callback(os.close, fd)
            # Chunks as they come off the connection (decoded): re-chunking would copy
            # every byte once more. The writes are unbuffered: each chunk is large.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadFailed(
                        f"larger than max_bytes ({max_bytes})", reason="too_large", kind="final"
                    )
                if len(head) < len(PDF_MAGIC):
                    head = (head + chunk[: len(PDF_MAGIC)])[: len(PDF_MAGIC)]
                    if len(head) == len(PDF_MAGIC) and head != PDF_MAGIC:
                        raise DownloadFailed(
                            "the body is not a PDF", reason="not_pdf", kind="retry"
                        )
                if clock() > deadline:
                    raise DownloadFailed("download timed out", reason="timeout", kind="retry")
                if cancelled():
                    raise DownloadCancelled
                tail = (tail + chunk[-TRAILER_WINDOW:])[-TRAILER_WINDOW:]
                digest.update(chunk)
                _write_all(fd, chunk)
                if size - submitted >= WRITEBACK_WINDOW:
                    # From the window before on: that one's pages are written by now.
                    _start_writeback(fd, dropped)
                    dropped, submitted = submitted, size
            if head != PDF_MAGIC or PDF_TRAILER not in tail:
                raise DownloadFailed("the body is not a whole PDF", reason="not_pdf", kind="retry")
            os.fsync(fd)
    except httpx.TimeoutException:
        temp.unlink(missing_ok=True)
        raise DownloadFailed("PDF host timed out", reason="timeout", kind="retry") from None
    except httpx.HTTPError as exc:
        temp.unlink(missing_ok=True)
        raise DownloadFailed(
            f"PDF download failed ({type(exc).__name__})", reason="connection", kind="retry"
        ) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    sha256 = digest.hexdigest()
    relative = f"{relative_dir}/{sha256}.pdf"
    final = pdf_dir / relative
    try:
        changed = _make_dirs(pdf_dir, relative_dir)
        if final.exists():
            temp.unlink()  # identical content is stored once
        else:
            os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # Durable before the caller commits pdf_archived: the entry (also when an earlier
    # attempt renamed it and died before this fsync) and any directory created for it.
    _fsync_dir(final.parent)
    for directory in changed:
        _fsync_dir(directory)
    return StoredPdf(sha256, size, relative)


def remove_stale_temporaries(pdf_dir: Path, *, older_than: float) -> int:
    """Delete temporaries left by a crash: ours from dead processes, anyone's when old."""
    removed = 0
    host = socket.gethostname()
    now = time.time()
    for temp in pdf_dir.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        # <prefix><host>-<pid>-<uuid><suffix>; the host name may itself contain dashes.
        owner, _, _unique = temp.name[len(TEMP_PREFIX) : -len(TEMP_SUFFIX)].rpartition("-")
        owner_host, _, pid = owner.rpartition("-")
        dead = owner_host == host and pid.isdigit() and not _pid_alive(int(pid))
        try:
            if dead or now - temp.stat().st_mtime > older_than:
                temp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the archiver ---------------------------------------------------------------------


Note = tuple[str, str, dict[str, object]]


@dataclass(frozen=True)
class Outcome:
    """How one job's attempt ended: archived, failed, retry (backing off), dead_link,
    or cancelled (the archiver is stopping)."""

    job: PdfJob
    kind: str
    message: str = ""
    retry_at: datetime | None = None
    # (level, event, fields) to log once the claim has committed: writing a log line may
    # block (a full pipe), and no lock should be held meanwhile.
    note: Note | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job.connection, self.job.order_id, self.job.version)


class Archiver:
    def __init__(
        self,
        db: Database,
        pdf_dir: Path,
        *,
        concurrency: int = 4,
        max_bytes: int = 50 * 1024 * 1024,
        timeout: float = 30.0,
        max_attempts: int = 6,
        retry_after_max: float = 300.0,
        download_timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._db = db
        self.pdf_dir = pdf_dir
        self._concurrency = concurrency
        self._max_bytes = max_bytes
        self._max_attempts = max_attempts
        self._retry_after_max = retry_after_max
        self._download_timeout = download_timeout
        self._clock = clock
        self._rand = rand
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.on_outcome: Callable[[Outcome], object] = lambda _outcome: None  # progress
        # No auth, no redirects: the link is the credential and must not travel.
        self._http = httpx.Client(
            verify=tls_context(),
            timeout=timeout,
            follow_redirects=False,
            transport=transport,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            # PDFs are compressed already; a compressed body would be inflated a whole
            # chunk at a time before max_bytes could see it.
            headers={
                "User-Agent": "syncd",
                "Accept": "application/pdf",
                "Accept-Encoding": "identity",
            },
        )
        make_private_dir(self.pdf_dir)  # the state dir too, when it does not exist yet
        removed = remove_stale_temporaries(self.pdf_dir, older_than=2 * download_timeout)
        if removed:
            get_logger(job="pdfs").info("removed stale temporary files", count=removed)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def close(self) -> None:
        self._http.close()

    def archive_due(self) -> list[Outcome]:
        """Work every due job, ``concurrency`` at a time, earliest deadline first.

        Each worker claims the next due job until none is left. A job is taken at most
        once per call: another worker may have read it as due just before its outcome
        committed (on SQLite, where no row lock says so), and one whose attempt failed
        is backing off anyway.
        """
        outcomes: list[Outcome] = []
        if not pdf_jobs.any_due(self._db, self._now()):
            return outcomes  # one query instead of a pool of workers finding nothing
        taken: set[pdf_jobs.JobKey] = set()
        lock = threading.Lock()

        def reserve(key: pdf_jobs.JobKey) -> bool:
            with lock:
                if key in taken:
                    return False
                taken.add(key)
                return True

        def worker() -> None:
            while not self._stopping.is_set():
                with pdf_jobs.claim_next(
                    self._db, self._now(), reserve, 2 * self._concurrency + 1
                ) as claim:
                    if claim is None:
                        return
                    outcome = self._archive(claim)
                with lock:
                    outcomes.append(outcome)
                if outcome.note is not None:
                    level, event, fields = outcome.note
                    job = outcome.job
                    log = get_logger(connection=job.connection, job="pdfs", order_id=job.order_id)
                    getattr(log, level)(event, version=job.version, **fields)
                self.on_outcome(outcome)

        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="syncd-pdf") as pool:
            for future in [pool.submit(worker) for _ in range(self._concurrency)]:
                future.result()
        return outcomes

    def _archive(self, claim: pdf_jobs.Claim) -> Outcome:
        job = claim.job
        assert job.url is not None
        try:
            stored = download_pdf(
                self._http,
                job.url,
                self.pdf_dir,
                f"{job.connection}/{job.order_id}",
                max_bytes=self._max_bytes,
                deadline=time.monotonic() + self._download_timeout,
                cancelled=self._stopping.is_set,
            )
        except DownloadCancelled:
            return Outcome(job, "cancelled")  # the claim ends unchanged: the job stays due
        except DownloadFailed as failure:
            return self._after(claim, failure)
        except OSError as exc:  # disk full, permissions: retry later, loudly
            return self._after(
                claim,
                DownloadFailed(
                    f"cannot write the PDF: {exc.strerror}", reason="storage", kind="retry"
                ),
            )
        if not claim.complete(stored.sha256, stored.size, stored.path, self._now()):
            return Outcome(job, "archived")
        archived: Note = ("info", "pdf archived", {"size": stored.size, "path": stored.path})
        return Outcome(job, "archived", note=archived)

    def _after(self, claim: pdf_jobs.Claim, failure: DownloadFailed) -> Outcome:
        job = claim.job
        decision = after_failure(
            failure,
            job.attempts + 1,
            max_attempts=self._max_attempts,
            retry_after_max=self._retry_after_max,
            rand=self._rand,
        )
        message = redact(f"order {job.order_id} v{job.version}: {failure}")
        now = self._now()
        if decision.action == "wait_for_link":
            claim.drop_link(str(failure), now)
            waiting: Note = ("info", "pdf link expired, waiting for a fresh one", {})
            return Outcome(job, "dead_link", message, note=waiting)
        if decision.action == "fail":
            failed: Note | None = None
            if claim.fail(decision.reason, now):
                failed = ("error", "pdf failed", {"reason": decision.reason})
            return Outcome(job, "failed", message, note=failed)
        retry_at = now + timedelta(seconds=decision.delay)
        claim.postpone(str(failure), retry_at, now)
        # The first failure of a job is news; later ones are not.
        first: Note = ("warning", "pdf download failed, will retry", {"error": str(failure)})
        return Outcome(job, "retry", message, retry_at, note=first if job.attempts == 0 else None)

    # -- driving it --

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Abandon downloads in progress (their temporaries are removed) and stop."""
        self._stopping.set()
        self._wake.set()

    def run(self, stop: threading.Event, idle: float = 30.0) -> None:
        """Archive until ``stop``: on every wake-up (a poll brought jobs or links) and
        whenever a backoff ends."""
        log = get_logger(job="pdfs")
        while not stop.is_set():
            self._wake.clear()
            timeout = idle
            try:
                self.archive_due()
                wakeup = pdf_jobs.next_wakeup(self._db, self._now())
                if wakeup is not None:
                    timeout = min(idle, max(0.05, (wakeup - self._now()).total_seconds()))
            except Exception as exc:  # keep archiving after a bug or a database outage
                outage = database_outage(exc)
                if outage:
                    log.error("archiving paused: database unavailable", error=outage)
                else:
                    log.exception("archiving round failed; retrying")
                timeout = min(idle, 5.0)
            self._wake.wait(timeout)

    def drain(self, sleep: Callable[[float], None]) -> list[str]:
        """Archive every due job (``run --once``), retrying each transient failure after
        its backoff up to ``max_attempts`` times in this run; returns why the jobs still
        pending then were not archived (empty when every job was archived or decided)."""
        unfinished: dict[tuple[str, int, int], str] = {}
        tries: dict[tuple[str, int, int], int] = {}
        retry_at: dict[tuple[str, int, int], datetime] = {}
        while True:
            outcomes = self.archive_due()
            for outcome in outcomes:
                key = outcome.key
                retry_at.pop(key, None)
                if outcome.kind not in ("retry", "dead_link"):
                    unfinished.pop(key, None)
                    continue
                unfinished[key] = outcome.message
                tries[key] = tries.get(key, 0) + 1
                if outcome.retry_at is not None and tries[key] < self._max_attempts:
                    retry_at[key] = outcome.retry_at
            if outcomes:
                continue
            now = self._now()
            # A job whose retry time has come but that was not due is not coming back.
            retry_at = {key: when for key, when in retry_at.items() if when > now}
            if not retry_at:
                return list(unfinished.values())
            sleep((min(retry_at.values()) - now).total_seconds())
