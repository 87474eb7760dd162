"""Object storage: which locations are objects (``s3://``, ``gs://``, ``az://``), the settings that reach
them, and one client per bucket.

Settings come from the standard environment of each cloud (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``...), read by the Rust ``object_store``
crate that both Lance and ``obstore`` use, so the database's tables and everything beside them reach the
same server with the same credentials. ``configure`` adds overrides (``--storage-option KEY=VALUE``,
``object_store``'s key names: ``aws_endpoint``, ``aws_region``, ``allow_http``...). They are kept in this
process's environment (``XSEARCH_STORAGE_OPTIONS``) so that decode workers and cluster tasks inherit them;
they are never written into a database or a log line.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from xsearch.errors import UsageError

SCHEMES = ("s3", "gs", "az")
OPTIONS_ENV = "XSEARCH_STORAGE_OPTIONS"
# Keys that configure the HTTP client rather than the store (``obstore`` takes them apart).
CLIENT_KEYS = {"allow_http", "allow_invalid_certificates", "connect_timeout", "timeout", "proxy_url"}
ENDPOINT_KEYS = ("aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


def is_object_uri(value) -> bool:
    """Whether ``value`` names an object (``s3://bucket/key``...) rather than a local path."""
    if isinstance(value, ObjectUri):
        return True
    return isinstance(value, str) and "://" in value and value.partition("://")[0] in SCHEMES


@dataclass(frozen=True)
class ObjectUri:
    """``scheme://bucket/key``, taken apart."""

    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str) -> ObjectUri:
        scheme, _, rest = text.partition("://")
        bucket, _, key = rest.partition("/")
        if scheme not in SCHEMES or not bucket:
            raise UsageError(f"{text}: not an object URI (expected s3://BUCKET/KEY)")
        return cls(scheme, bucket, key.strip("/"))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    # Enough of ``pathlib``'s manner for a database's location to be joined and named in messages the same
    # way whether it is a folder or a prefix.
    def __truediv__(self, name: str) -> ObjectUri:
        return ObjectUri(self.scheme, self.bucket, f"{self.key}/{name}".strip("/"))

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        stem, dot, ext = self.name.rpartition(".")
        return f".{ext}" if dot and stem else ""

    def expanduser(self) -> ObjectUri:
        return self


def location(value: str | os.PathLike) -> Path | ObjectUri:
    """A local path (``~`` expanded) or an object URI, for whatever names a database or a file."""
    if isinstance(value, (Path, ObjectUri)):
        return value
    text = os.fspath(value)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    return ObjectUri.parse(text) if is_object_uri(text) else Path(text).expanduser()


def configure(options: dict[str, str]) -> None:
    """Add ``options`` to the settings of every object store this process (and its children) opens."""
    merged = {**overrides(), **{k.strip().lower(): str(v) for k, v in options.items()}}
    os.environ[OPTIONS_ENV] = json.dumps(merged)
    bucket_store.cache_clear()


def parse_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--storage-option``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        example = "e.g. aws_region=eu-west-1"
        raise UsageError(f"{text!r}: a storage option is KEY=VALUE ({example})", argument="storage_option")
    return key.strip(), value


def overrides() -> dict[str, str]:
    try:
        found = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    except ValueError:
        raise UsageError(f"{OPTIONS_ENV} is not a JSON object of storage options") from None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def storage_environment() -> dict[str, str]:
    """The variables that carry this process's object-store settings, for processes on other machines
    (cluster nodes): the AWS ones that are set, and the overrides."""
    names = [n for n in os.environ if n.startswith("AWS_")] + [OPTIONS_ENV]
    return {n: os.environ[n] for n in names if os.environ.get(n)}


def endpoint() -> str | None:
    """The endpoint every S3 request goes to, when not AWS's own."""
    chosen = overrides()
    for key in ENDPOINT_KEYS:
        if chosen.get(key):
            return chosen[key]
    return next((os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)), None)


def lance_options() -> dict[str, str]:
    """``storage_options`` for Lance: the overrides, and plain HTTP allowed when the endpoint is ``http://``
    (a server on this machine or a private network: the environment alone is enough)."""
    options = overrides()
    if (endpoint() or "").startswith("http://"):
        options.setdefault("allow_http", "true")
    return options


@functools.lru_cache(maxsize=16)
def bucket_store(scheme: str, bucket: str):
    """The ``obstore`` client of one bucket (shared: clients pool their connections)."""
    from obstore.store import from_url

    options = lance_options()
    client = {k: _flag(v) if k.startswith("allow_") else v for k, v in options.items() if k in CLIENT_KEYS}
    config = {k: v for k, v in options.items() if k not in CLIENT_KEYS}
    return from_url(f"{scheme}://{bucket}", config=config or None, client_options=client or None)


def store_of(uri: ObjectUri):
    return bucket_store(uri.scheme, uri.bucket)


def _flag(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")
