"""``s3://bucket/prefix``: the vault's blob store on S3-compatible object storage.

Object storage is untrusted, like a shared folder: the vault verifies
everything it reads back (signatures, hashes, AES-GCM tags), so this store
only has to move bytes. What it guarantees itself: a put is atomic per key
(one PutObject: all or nothing), :meth:`S3BlobStore.put_if_absent` is a
conditional write (``If-None-Match: *``) that exactly one writer wins, reads
are bounded before the body is read, listings are paginated, and every
failure is one line naming the setting to check.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from hub.blobs import check_key, get_bounded
from hub.errors import ConfigError, IntegrityError
from plugins.s3.stream import Reads, StreamedObject

_POOL_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # a thread of the parent may have held the lock as it forked; it does not exist here
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_CREDENTIALS_HINT = (
    "check the AWS credentials chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "~/.aws/credentials or the instance role)"
)


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix/``); a bad URL is a ConfigError."""
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if parsed.scheme != "s3" or not _BUCKET.fullmatch(bucket or "") or parsed.query:
        raise ConfigError(
            f"vault.blob_url {url!r} is not an S3 URL: use s3://BUCKET/PREFIX (bucket: 3-63 "
            "lower-case letters, digits, '.' or '-')"
        )
    try:
        check_key(prefix) if prefix else None
    except ValueError:
        raise ConfigError(
            f"vault.blob_url {url!r}: the prefix may hold lower-case letters, digits, '_', "
            "'-', '.' and '/' only"
        ) from None
    return bucket, f"{prefix}/" if prefix else ""


class S3BlobStore:
    """Blobs as objects ``<prefix>/<key>`` in one bucket (see the module docstring)."""

    page_size = 1000
    """Keys per ListObjectsV2 page (S3's own maximum)."""
    parallel_reads = 8
    """GetObject requests :meth:`get_many` keeps in flight (boto3 clients are thread-safe)."""

    def __init__(self, url: str, settings: Any) -> None:
        from botocore.config import Config

        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self._reads: tuple[int, ThreadPoolExecutor] | None = None
        self.endpoint = settings.get("s3.endpoint_url") or None
        self.attempts = max(1, int(settings.get("s3.max_attempts")))
        config = Config(
            retries={"total_max_attempts": self.attempts, "mode": "standard"},
            connect_timeout=float(settings.get("s3.connect_timeout_s")),
            read_timeout=float(settings.get("s3.read_timeout_s")),
            # a custom endpoint (MinIO, Ceph, a local server) is addressed path-style
            s3={"addressing_style": "path" if self.endpoint else "auto"},
            user_agent_extra="qlora-hub",
            # Every byte read back is authenticated by the vault (AES-GCM tags, SHA-256,
            # signatures), so botocore's CRC32 of each body would only repeat that work on
            # the CPU: checksums only where an operation requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._options = {
            "endpoint_url": self.endpoint,
            "region_name": settings.get("s3.region") or None,
            "config": config,
        }
        self._client: tuple[int, Any] | None = None
        self.client  # noqa: B018 (built now: a bad setting fails here, not on first use)

    @property
    def client(self) -> Any:
        """This process's boto3 client. A forked child builds its own: the parent's pooled
        keep-alive connections are its sockets too, and two processes writing requests
        and reading answers on one connection would each get the other's bytes."""
        made = self._client
        if made is None or made[0] != os.getpid():
            import boto3
            import botocore.session

            with _POOL_LOCK:
                made = self._client
                if made is None or made[0] != os.getpid():
                    # Timestamps (LastModified of each listed key, of each GetObject) stay
                    # text: nothing here reads them, and dateutil parsed each in ~0.1 ms of
                    # CPU (a listing of 1,000 record keys: 121 ms of CPU, 27 ms without).
                    core = botocore.session.get_session()
                    parsers = core.get_component("response_parser_factory")
                    parsers.set_parser_defaults(timestamp_parser=str)
                    session = boto3.session.Session(botocore_session=core)
                    made = (os.getpid(), session.client("s3", **self._options))
                    self._client = made
        return made[1]

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r}, endpoint={self.endpoint!r})"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    # -- errors ---------------------------------------------------------------------
    def _error(self, exc: Exception, key: str) -> Exception:
        """One line naming what to check, for any failure but a missing key."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        where = self.endpoint or "AWS S3"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ConfigError(f"no AWS credentials for {self.url}: {_CREDENTIALS_HINT}")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _CREDENTIAL_CODES or status == 403:
                return ConfigError(
                    f"{where} refused the credentials for {self.url} ({code or status}): "
                    f"{_CREDENTIALS_HINT}"
                )
            if code == "NoSuchBucket":
                return ConfigError(
                    f"bucket {self.bucket!r} does not exist at {where}: create it or fix "
                    "vault.blob_url"
                )
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                return ConfigError(
                    f"{where} failed ({status} {code}) on {key} after {self.attempts} attempts: "
                    "try again later, or check s3.endpoint_url and s3.max_attempts"
                )
            return ConfigError(f"{where} refused {key} in {self.url} ({status} {code})")
        return ConfigError(
            f"cannot reach {where} for {self.url} after {self.attempts} attempts "
            f"({type(exc).__name__}): check s3.endpoint_url and s3.region"
        )

    def _call(self, key: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    @staticmethod
    def _status(exc: BaseException) -> int:
        response = getattr(exc.__cause__, "response", None) or {}
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)

    def _missing(self, key: str) -> IntegrityError:
        return IntegrityError(
            f"blob {key} is missing from {self.url}: the vault was altered outside qlora-hub"
        )

    # -- the BlobStore protocol ---------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        """One PutObject: the object appears whole or not at all."""
        body = data if isinstance(data, bytes | bytearray) else bytes(data)
        self._call(key, self.client.put_object, Key=self._name(key), Body=body)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Conditional PutObject (``If-None-Match: *``); False when the key exists (412).

        A 409 (another conditional write to the key in flight) is retried with backoff.
        """
        body = data if isinstance(data, bytes | bytearray) else bytes(data)
        for attempt in range(self.attempts + 3):
            try:
                self._call(
                    key, self.client.put_object, Key=self._name(key), Body=body, IfNoneMatch="*"
                )
                return True
            except ConfigError as exc:
                status = self._status(exc)
                if status == 412:
                    return False
                if status != 409:
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt))
        raise ConfigError(
            f"{self.endpoint or 'AWS S3'} kept reporting a conflicting write to {key} in "
            f"{self.url}: try again (s3.max_attempts)"
        )

    def _get_object(self, key: str) -> dict[str, Any]:
        try:
            return self._call(key, self.client.get_object, Key=self._name(key))
        except ConfigError as exc:
            if self._status(exc) == 404:
                raise self._missing(key) from None
            raise

    def view(self, key: str) -> StreamedObject:
        """The object as it downloads (:class:`StreamedObject`: how pull reads a payload, so
        decryption runs while the rest arrives); missing -> IntegrityError."""
        out = self._get_object(key)
        size = int(out.get("ContentLength", -1))
        if size < 0:  # nothing to bound the read by: never read a body of unknown length
            out["Body"].close()
            raise IntegrityError(
                f"blob {key}: {self.endpoint or 'AWS S3'} sent it with no Content-Length "
                "(S3 always sends one): check s3.endpoint_url"
            )
        return StreamedObject(key, out["Body"], size, lambda exc: self._error(exc, key))

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The object's bytes; refused before reading when over ``limit``, missing -> IntegrityError."""
        out = self._get_object(key)
        size = int(out.get("ContentLength", -1))
        body = out["Body"]
        try:
            if limit is not None and size > limit:
                raise IntegrityError(
                    f"blob {key} is {size:,} bytes, over its {limit:,} byte bound: the vault "
                    "was altered outside qlora-hub"
                )
            data = body.read() if limit is None else body.read(limit + 1)
        except IntegrityError:
            raise
        except Exception as exc:  # a connection dropped mid-body
            raise self._error(exc, key) from exc
        finally:
            body.close()
        if size >= 0 and len(data) != size:
            raise IntegrityError(f"blob {key} in {self.url} came back truncated: try again")
        return data

    def get_many(self, keys: list[str], limit: int) -> Reads:
        """:meth:`get` of each key (each bounded by ``limit``), in order, with up to
        ``parallel_reads`` requests in flight from the call on: a name's signed records
        cost about one round trip, not one each. The caller still checks them one by
        one, in order; ``close()`` drops what it no longer needs."""
        return Reads(
            self._pool(),
            functools.partial(get_bounded, self, limit=limit),
            keys,
            self.parallel_reads,
        )

    def _pool(self) -> ThreadPoolExecutor:
        with _POOL_LOCK:  # one per process and store (a forked child starts its own)
            if self._reads is None or self._reads[0] != os.getpid():
                pool = ThreadPoolExecutor(self.parallel_reads, thread_name_prefix="s3-get")
                self._reads = (os.getpid(), pool)
            return self._reads[1]

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.head_object, Key=self._name(key))
        except ConfigError as exc:
            if self._status(exc) == 404:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._call(key, self.client.delete_object, Key=self._name(key))

    def keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted; ListObjectsV2 page by page (``page_size`` keys a page)."""
        return sorted(self.tagged_keys(prefix))

    def tagged_keys(self, prefix: str) -> dict[str, str]:
        """Keys under ``prefix`` -> the ETag the listing gives each (what the server says
        identifies its bytes; unverified: a reader may skip fetching bytes it verified
        under the same ETag, never trust bytes it did not verify)."""
        from botocore.exceptions import BotoCoreError, ClientError

        start = self.prefix + prefix
        out: dict[str, str] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    name = str(item["Key"])
                    # what a listing names may be read, replayed or deleted: never a key
                    # outside the prefix asked for
                    if not name.startswith(start):
                        raise IntegrityError(
                            f"{self.endpoint or 'AWS S3'} listed {name[:200]!r} outside the "
                            f"prefix {prefix} of {self.url}: check s3.endpoint_url"
                        )
                    out[name[len(self.prefix) :]] = str(item.get("ETag", ""))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix or "/") from exc
        return out
