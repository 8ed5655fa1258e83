"""The off-site repository's store: `s3://bucket/prefix` in S3-compatible object storage,
reached through boto3 (imported lazily: the light install needs none of this).

The repository holds the local tree's layout under its prefix (see `offsite_catalog` for how
a backup is published and read, `offsite_transfer` for push and fetch). Endpoint, region,
addressing style and credentials come only from the standard AWS chain (environment, shared
config and credentials files, instance role): never from argv, and never logged.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from backup_core.tools.conninfo import redact
from backup_core.tools.errors import (
    AtbError,
    ConfigError,
    ConnectionFailed,
    VerifyFailed,
)
from backup_core.tools.extras import require

log = logging.getLogger("atb.repository")
T = TypeVar("T")

AGE_SUFFIX = ".age"
FULL_MANIFEST = ".manifest.json"  # the whole manifest, encrypted, beside the record
OFFSITE_FORMAT = 1
# what an encrypted repository's plaintext record leaves out: the data's shape and content
PRIVATE_FIELDS = ("row_counts", "row_checksums", "inventory", "definitions", "conditions")
PART_SIZE = 8 << 20  # boto3's own default part size
# each part's checksum, which the store checks on arrival: boto3's default, cheaper than a
# SHA-256 per part, which would only repeat what the manifest's SHA-256 proves end to end
PART_CHECKSUM = "CRC32"
UPLOAD_THREADS = 10  # parts in flight at once, as boto3's upload_file
_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")
# A cache of the small JSON objects (manifest records, drill histories) so that a listing of
# 10,000 backups reads a few segments instead of 10,000 objects. Each entry carries the
# object's ETag and is used only while the listing shows the same ETag: the listing decides
# what exists and what it holds, the index only saves the reads.
INDEX_DIR = ".index"
INDEX_FORMAT = 1
INDEX_SEGMENTS_MAX = 16


class Obj(NamedTuple):
    size: int
    modified: datetime
    etag: str


@dataclass(frozen=True)
class RepoUrl:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    @classmethod
    def parse(cls, text: str) -> RepoUrl:
        m = _URL.match(text.strip())
        if not m:
            raise ConfigError(f"--repo {text!r} is not s3://bucket/prefix (endpoint, region "
                              "and credentials come from the AWS configuration)")
        prefix = (m.group(2) or "").strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ConfigError(f"--repo {text!r}: the prefix has an empty, . or .. part")
        return cls(m.group(1), prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key


# -- the client ------------------------------------------------------------------------------


def _boto() -> Any:
    require("s3", what="an off-site repository (--repo / BACKUP_REPO)")
    import boto3

    return boto3


def translate(exc: BaseException, repo: RepoUrl | str, doing: str, *,
              reading: str | None = None) -> AtbError:
    """A store's refusal as one line a person can act on (never a key or a secret). With
    `reading` (an object's key), a missing object is that object gone, a failed check.
    boto3's and s3transfer's own errors (an upload's S3UploadFailedError) wrap botocore's:
    the one they wrap is the one translated."""
    from botocore import exceptions as bx

    exc = _underlying(exc)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ConfigError(f"{doing} {repo}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if reading is not None and code in ("NoSuchKey", "404"):
            return VerifyFailed(f"{reading} is gone from {repo} (deleted while it was being "
                                "read?): nothing was restored")
        if code in ("NoSuchBucket",) or (code == "404" and "bucket" in doing):
            bucket = repr(repo.bucket) if isinstance(repo, RepoUrl) else "named"
            return ConnectionFailed(f"{doing} {repo}: the bucket {bucket} does not exist")
        if code == "RequestTimeTooSkewed" or _skewed(exc.response):
            return ConnectionFailed(f"{doing} {repo}: this host's clock is too far from the "
                                    "store's: fix the clock (NTP)")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") \
                or status == 403:
            return ConnectionFailed(f"{doing} {repo}: the store refused our credentials "
                                    f"({code or status}): check the AWS keys or profile and "
                                    "the key's permissions")
        return ConnectionFailed(f"{doing} {repo}: the store answered {code or status}: "
                                f"{err.get('Message', '')}".rstrip(": "))
    if isinstance(exc, bx.BotoCoreError):
        return ConnectionFailed(f"{doing} {repo}: cannot reach the store: {exc}")
    return ConnectionFailed(f"{doing} {repo}: {exc}")


def unplaced(exc: BaseException) -> AtbError:
    """An error of the S3 client that reached the command line without passing `guarded`:
    still the store's refusal (exit 4), one line, not an internal error."""
    return translate(exc, "the object store", "talking to")


def is_store_error(exc: BaseException) -> bool:
    """Whether `exc` is raised by the S3 client's libraries (botocore, boto3, s3transfer)."""
    return type(exc).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer")


def _underlying(exc: BaseException) -> BaseException:
    """The botocore error a boto3 or s3transfer error was raised from, if there is one: its
    `__cause__`, its `last_exception` (s3transfer's retries), and, for the store libraries'
    own errors only, the error being handled when it was raised (`__context__`: boto3's
    S3UploadFailedError is raised in an `except ClientError` without `from`). An error of
    anyone else is not taken for the store error it happened to be raised beside."""
    from botocore import exceptions as bx

    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None or isinstance(cur, bx.BotoCoreError | bx.ClientError):
            break
        cur = cur.__cause__ or getattr(cur, "last_exception", None) or (
            cur.__context__ if is_store_error(cur) else None)
    return cur if isinstance(cur, bx.BotoCoreError | bx.ClientError) else exc


def _skewed(response: dict[str, Any]) -> bool:
    """Whether the store's clock (its Date header) is more than 5 minutes from ours: a
    signature it refuses for that reason looks like bad credentials (a HEAD has no body)."""
    from email.utils import parsedate_to_datetime

    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        theirs = parsedate_to_datetime(str(date))
    except (TypeError, ValueError):
        return False
    from botocore.auth import get_current_datetime  # the clock botocore signs with

    ours = get_current_datetime()
    ours = ours if ours.tzinfo else ours.replace(tzinfo=UTC)
    return bool(abs((theirs - ours).total_seconds()) > 300)


@contextmanager
def guarded(repo: RepoUrl, doing: str) -> Iterator[None]:
    from botocore import exceptions as bx

    try:
        yield
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise translate(exc, repo, doing) from exc
    except Exception as exc:  # boto3's and s3transfer's own (S3UploadFailedError, ...)
        if not is_store_error(exc):
            raise
        raise translate(exc, repo, doing) from exc


class Repository:
    """A connection to one repository; open it with `open_repository`."""

    def __init__(self, url: RepoUrl, client: Any) -> None:
        self.url = url
        self.client = client

    def __str__(self) -> str:
        return str(self.url)

    # -- objects --

    def objects(self) -> dict[str, Obj]:
        """Every object under the prefix: relative key -> (size, last modified, ETag).

        Read as raw XML pages through presigned URLs: botocore's parser costs ~0.3 s per
        1,000 keys, ElementTree ~0.01 s, and a repository of 10,000 backups holds 20,000 to
        40,000 objects. Anything unexpected falls back to botocore's paginator, whose errors
        are the ones a person reads."""
        try:
            return self._objects_fast()
        except Exception as exc:  # the paginator repeats it and says what went wrong
            log.debug("fast listing of %s failed (%s): using the paginator", self.url, exc)
        return self._objects_paginated()

    def _objects_fast(self) -> dict[str, Obj]:
        import xml.etree.ElementTree as ET
        from urllib.parse import unquote_plus

        import urllib3
        from botocore.httpsession import get_cert_path

        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        verify = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
        http = urllib3.PoolManager(ca_certs=verify if isinstance(verify, str) else None,
                                   retries=urllib3.Retry(3, backoff_factor=0.2),
                                   timeout=urllib3.Timeout(connect=5, read=60))
        found: dict[str, Obj] = {}
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.url.bucket, "MaxKeys": 1000}
            if self.url.prefix:
                params["Prefix"] = self.url.key("")
            if token:
                params["ContinuationToken"] = token
            url = self.client.generate_presigned_url("list_objects_v2", Params=params,
                                                     ExpiresIn=300)
            response = http.request("GET", url, preload_content=True)
            if response.status != 200:
                raise ConnectionError(f"HTTP {response.status}")
            root = ET.fromstring(response.data)
            for item in root.iter(f"{ns}Contents"):
                key = unquote_plus(item.findtext(f"{ns}Key") or "")  # encoding-type=url
                found[self.url.rel(key)] = Obj(
                    int(item.findtext(f"{ns}Size") or 0),
                    datetime.fromisoformat(item.findtext(f"{ns}LastModified") or ""),
                    item.findtext(f"{ns}ETag") or "")
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true":
                return found
            token = root.findtext(f"{ns}NextContinuationToken")
            if not token:
                raise ValueError("a truncated page without a continuation token")

    def _objects_paginated(self) -> dict[str, Obj]:
        found: dict[str, Obj] = {}
        prefix = self.url.key("") if self.url.prefix else ""
        with guarded(self.url, "listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.url.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    found[self.url.rel(item["Key"])] = Obj(int(item["Size"]),
                                                           item["LastModified"],
                                                           str(item.get("ETag", "")))
        return found

    def head(self, rel: str) -> dict[str, Any] | None:
        from botocore import exceptions as bx

        try:
            out: dict[str, Any] = self.client.head_object(Bucket=self.url.bucket,
                                                          Key=self.url.key(rel))
            return out
        except bx.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise translate(exc, self.url, "reading") from exc
        except bx.BotoCoreError as exc:
            raise translate(exc, self.url, "reading") from exc

    def read_small(self, rel: str, limit: int = 64 << 20) -> bytes:
        with guarded(self.url, f"reading {rel} from"):
            body = self.client.get_object(Bucket=self.url.bucket, Key=self.url.key(rel))["Body"]
            data: bytes = body.read(limit + 1)
        if len(data) > limit:
            raise VerifyFailed(f"{rel} in {self.url} is larger than {limit >> 20} MiB")
        return data

    def open(self, rel: str) -> Any:
        """A streaming body of one object."""
        from botocore import exceptions as bx

        try:
            return self.client.get_object(Bucket=self.url.bucket, Key=self.url.key(rel))["Body"]
        except (bx.ClientError, bx.BotoCoreError) as exc:
            raise translate(exc, self.url, f"reading {rel} from", reading=rel) from exc

    def get_range(self, rel: str, start: int, end: int, *, etag: str = "") -> Any:
        """The store's answer to a GET of bytes [start, end) of one object (with `etag`, only
        while the object is still that one): the one way a ranged read is asked for. The
        client's errors are raised as they are, for each reader to judge."""
        return self.client.get_object(Bucket=self.url.bucket, Key=self.url.key(rel),
                                      Range=f"bytes={start}-{end - 1}",
                                      **({"IfMatch": etag} if etag else {}))

    def read_range(self, rel: str, start: int, end: int) -> tuple[bytes, str]:
        """Bytes [start, end) of one object (fewer when it is shorter), and its ETag."""
        from botocore import exceptions as bx

        try:
            got = self.get_range(rel, start, end)
            return got["Body"].read(), str(got.get("ETag", ""))
        except (bx.ClientError, bx.BotoCoreError) as exc:
            raise translate(exc, self.url, f"reading {rel} from", reading=rel) from exc

    def open_ranged(self, rel: str, size: int, *, write_to: int | None = None) -> RangedReader:
        """A large object read front to back, its parts fetched ahead in parallel (and with
        `write_to`, a file descriptor, each part also written at its offset by the thread
        that fetched it)."""
        return RangedReader(self, rel, size, write_to=write_to)

    def upload(self, path: Path, rel: str, *, metadata: dict[str, str],
               progress: Callable[[int], None] | None = None) -> None:
        """One file as one object: multipart past PART_SIZE, each part checksummed (CRC32,
        boto3's own default: the store refuses a part whose bytes differ; the manifest's
        SHA-256 proves the whole object end to end), invisible until the last part lands."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=10, use_threads=True)
        sent = [0]

        def count(n: int) -> None:  # boto3 reports each chunk; we report the running total
            sent[0] += n
            if progress is not None:
                progress(sent[0])

        with guarded(self.url, f"uploading {rel} to"):
            self.client.upload_file(str(path), self.url.bucket, self.url.key(rel),
                                    ExtraArgs={"ChecksumAlgorithm": PART_CHECKSUM,
                                               "Metadata": metadata},
                                    Config=config, Callback=count)

    def upload_parts(self, parts: Iterable[bytearray], rel: str, *, metadata: dict[str, str],
                     progress: Callable[[int], None] | None = None,
                     sent: Callable[[bytearray], None] | None = None) -> None:
        """Parts made while the upload runs (encryption under way) as one multipart object,
        `UPLOAD_THREADS` parts in flight, each checksummed (CRC32, as `upload`); `sent` gets
        each part back once it is stored, for its buffer to be filled again. Each part goes
        out as one buffer in one `sendall`, where boto3's `upload_fileobj` copies each part
        into a BytesIO and sends it in Python-sized pieces. Invisible until the last part
        lands: a failure (of the store, or of `parts`, raised as it is) aborts the upload."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        key, bucket = self.url.key(rel), self.url.bucket
        with guarded(self.url, f"uploading {rel} to"):
            upload = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, Metadata=metadata,
                ChecksumAlgorithm=PART_CHECKSUM)["UploadId"]
        done: list[dict[str, Any]] = []
        total = 0

        def one(number: int, body: bytearray) -> dict[str, Any]:
            got = self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                          PartNumber=number, Body=body,
                                          ChecksumAlgorithm=PART_CHECKSUM)
            record = {"PartNumber": number, "ETag": got["ETag"]}
            if got.get("ChecksumCRC32"):
                record["ChecksumCRC32"] = got["ChecksumCRC32"]
            return record

        def settle(futures: set[Future[dict[str, Any]]], bodies: dict[Any, bytearray],
                   *, every: bool) -> set[Future[dict[str, Any]]]:
            nonlocal total
            finished, waiting = wait(futures, return_when="ALL_COMPLETED" if every
                                     else FIRST_COMPLETED)
            for future in finished:
                done.append(future.result())
                body = bodies.pop(future)
                total += len(body)
                if sent is not None:
                    sent(body)
                if progress is not None:
                    progress(total)
            return waiting

        try:
            with guarded(self.url, f"uploading {rel} to"), \
                    ThreadPoolExecutor(max_workers=UPLOAD_THREADS,
                                       thread_name_prefix="atb-put") as pool:
                flying: set[Future[dict[str, Any]]] = set()
                bodies: dict[Any, bytearray] = {}
                try:
                    for number, body in enumerate(parts, start=1):
                        future = pool.submit(one, number, body)
                        flying.add(future)
                        bodies[future] = body
                        if len(flying) >= UPLOAD_THREADS:
                            flying = settle(flying, bodies, every=False)
                    settle(flying, bodies, every=True)
                finally:
                    for future in flying:
                        future.cancel()
                done.sort(key=lambda p: int(p["PartNumber"]))
                self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                                      MultipartUpload={"Parts": done})
        except BaseException:
            try:  # best effort: a store that is down keeps the parts until `push` aborts them
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except Exception as exc:
                log.debug("could not abort the upload of %s: %s", rel, exc)
            raise

    def put(self, rel: str, data: bytes) -> None:
        with guarded(self.url, f"writing {rel} to"):
            self.client.put_object(Bucket=self.url.bucket, Key=self.url.key(rel), Body=data,
                                   ChecksumAlgorithm="SHA256",
                                   ContentType="application/json")

    def put_sealed(self, rel: str, data: bytes, *, metadata: dict[str, str],
                   progress: Callable[[int], None] | None = None) -> None:
        """A small encrypted object (at most one part) from memory in one request: its
        ciphertext never touches the disk."""
        with guarded(self.url, f"uploading {rel} to"):
            self.client.put_object(Bucket=self.url.bucket, Key=self.url.key(rel), Body=data,
                                   Metadata=metadata, ChecksumAlgorithm=PART_CHECKSUM)
        if progress is not None:
            progress(len(data))

    def delete(self, rels: list[str]) -> None:
        """Delete objects in the order given (the manifest record first)."""
        for rel in rels:
            with guarded(self.url, f"deleting {rel} from"):
                self.client.delete_object(Bucket=self.url.bucket, Key=self.url.key(rel))


class Changed(VerifyFailed):
    """An object replaced, cut short or extended in the store while it was read."""


@dataclass(frozen=True)
class Span:
    """One ranged read of an object: its bytes [start, end)."""

    start: int
    end: int


@contextmanager
def spans_fetched(repo: Repository, rel: str, size: int, etag: str, spans: list[Span],
                  work: Callable[[int, bytes], T], *,
                  ahead: int = 10) -> Iterator[Iterator[tuple[bytes, T]]]:
    """Ranged GETs of `spans` of one object of `size` bytes (the manifest's) and ETag
    `etag` (from a first read), `ahead` in flight, each handed to `work(i, data)` in the
    thread that fetched it (decrypting, writing: in parallel); yields (data, what work made)
    in order. Every answer must be of that object, whole: a part of another size, another
    ETag or another total length is `Changed`, never bytes of a mix of objects. Leaving the
    block waits for the parts in flight (their work may write into the caller's file)."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore import exceptions as bx

    def get(i: int) -> tuple[bytes, T]:
        span = spans[i]
        try:
            got = repo.get_range(rel, span.start, span.end, etag=etag)
            data: bytes = got["Body"].read()
        except bx.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "InvalidRange") or status in (412, 416):
                raise Changed(f"{rel} in {repo.url} changed in the store while it was read "
                              "(replaced or cut short): nothing was restored") from exc
            raise translate(exc, repo.url, f"downloading {rel} from", reading=rel) from exc
        except bx.BotoCoreError as exc:
            raise translate(exc, repo.url, f"downloading {rel} from") from exc
        total = str(got.get("ContentRange", "")).rpartition("/")[2]
        if len(data) != span.end - span.start or total != str(size) \
                or got.get("ETag", etag) != etag:
            raise Changed(f"{rel} in {repo.url} is not the object the manifest describes, or "
                          f"changed while it was read (its size is {total or '?'} bytes, "
                          f"the manifest's {size}): nothing was restored")
        return data, work(i, data)

    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="atb-get")
    pending: deque[Future[tuple[bytes, T]]] = deque()
    following = iter(range(len(spans)))

    def submit() -> None:
        i = next(following, None)
        if i is not None:
            pending.append(pool.submit(get, i))

    def ordered() -> Iterator[tuple[bytes, T]]:
        for _ in range(ahead):
            submit()
        while pending:
            got = pending.popleft().result()
            submit()
            yield got

    try:
        yield ordered()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class RangedReader(io.RawIOBase):
    """One object read in order through ranged GETs, `AHEAD` parts in flight: the consumer
    (hashing, and writing unless the fetching threads write) works while the next arrive, as boto3's
    download_file keeps its threads busy, but with no second pass over a temporary file.
    Reads exactly `size` bytes (the manifest's): a shorter object ends early, so its hash
    cannot match; a store error is raised, translated, from `readinto`."""

    AHEAD = 10

    def __init__(self, repo: Repository, rel: str, size: int, *,
                 write_to: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.repo, self.rel, self.size, self.write_to = repo, rel, size, write_to
        self.pool = ThreadPoolExecutor(max_workers=self.AHEAD, thread_name_prefix="atb-get")
        self.starts = iter(range(0, size, PART_SIZE))
        self.pending: deque[Future[bytes]] = deque()
        self.buf = memoryview(b"")
        for _ in range(self.AHEAD):
            self._next()

    def _next(self) -> None:
        start = next(self.starts, None)
        if start is not None:
            self.pending.append(self.pool.submit(self._get, start))

    def _get(self, start: int) -> bytes:
        from botocore import exceptions as bx

        try:
            got = self.repo.get_range(self.rel, start, min(start + PART_SIZE, self.size))
            data: bytes = got["Body"].read()
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # cut short: the hash says so
            raise translate(exc, self.repo.url, f"downloading {self.rel} from",
                            reading=self.rel) from exc
        except bx.BotoCoreError as exc:
            raise translate(exc, self.repo.url, f"downloading {self.rel} from") from exc
        if self.write_to is not None:  # in this thread: the writes go in parallel too
            view, at = memoryview(data), start
            while view:
                n = os.pwrite(self.write_to, view, at)
                view, at = view[n:], at + n
        return data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """The next bytes, at most one part (no copy when a whole part is asked for)."""
        if not self._fill():
            return b""
        if size < 0 or size >= len(self.buf):
            whole = self.buf.obj
            data = whole if isinstance(whole, bytes) and len(whole) == len(self.buf) \
                else bytes(self.buf)
            self.buf = memoryview(b"")
            return data
        data = bytes(self.buf[:size])
        self.buf = self.buf[size:]
        return data

    def _fill(self) -> bool:
        while not self.buf:
            if not self.pending:
                return False
            data = self.pending.popleft().result()
            self._next()
            if not data:  # the object ended before `size`: stop, the hash tells
                self.pending.clear()
                return False
            self.buf = memoryview(data)
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._fill():
            return 0
        n = min(len(buffer), len(self.buf))
        buffer[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def close(self) -> None:
        # with `write_to`, the parts in flight finish before the caller closes its
        # descriptor: a write must never land in a file that reused the number
        self.pool.shutdown(wait=self.write_to is not None, cancel_futures=True)
        super().close()


def open_repository(url: str) -> Repository:
    """Parse `url`, build a client from the standard AWS chain, and check that the bucket
    answers to these credentials (exit 4 when it does not), before any work starts."""
    repo = RepoUrl.parse(url)
    boto3 = _boto()
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                    read_timeout=60, max_pool_connections=32,
                    signature_version="s3v4")  # presigned URLs too (the fast listing)
    with guarded(repo, "opening"):
        session = boto3.session.Session()
        try:
            client = session.client("s3", config=config,
                                    region_name=session.region_name or "us-east-1")
        except ValueError as exc:  # botocore's check of the endpoint (AWS_ENDPOINT_URL...)
            raise ConfigError(f"cannot use the S3 endpoint: {redact(str(exc))}; give it as "
                              "http(s)://host:port (AWS_ENDPOINT_URL, or endpoint_url in the "
                              "AWS configuration)") from None
    with guarded(repo, "opening"):  # List is what even a read-only key may do
        client.list_objects_v2(Bucket=repo.bucket, Prefix=repo.key(""), MaxKeys=1)
    return Repository(repo, client)
