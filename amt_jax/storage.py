"""Where workdirs, checkpoints and outputs live: local paths or filesystem URLs.

Every entry point (``python -m amt_jax.train``, ``amt-jax``, the checkpoint helpers) goes
through :func:`resolve` first, then these helpers, so a URL is never handed to ``os`` (which
would write ``gs://bucket/run`` as ``./gs:/bucket/run``):

- a local path (no scheme) stays a local path, handled with ``os`` as before;
- a ``file://`` URL is unwrapped into its local path;
- any other URL goes through ``tf.io.gfile`` (files, TensorBoard event files) and, for orbax
  checkpoints, through ``etils.epath``. Which schemes work is asked of those libraries:
  TensorFlow 2.21 registers ``gs://`` and ``ram://`` (its in-process memory filesystem),
  plugins such as tensorflow-io add more; epath knows ``gs://, s3://, az://, hf://``; orbax
  on ``gs://`` also needs ``google-cloud-storage`` (``pip install 'amt_jax[gcs]'``).
- a scheme that cannot be used is a one-line :class:`StorageError` naming the URL, why, and
  what to do instead, raised before anything is written.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import posixpath
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: what a user can do instead of an unusable URL (appended to the errors)
_INSTEAD = "use a local path, a mounted bucket (gcsfuse, mountpoint-s3, blobfuse) or a gs:// URL"


class StorageError(ValueError):
    """A path or URL that cannot be used; the message names it, says why and what to do."""


def scheme(path: str | os.PathLike) -> str | None:
    """The URL scheme of ``path`` in lower case (``"gs"``), or None for a local path."""
    match = _URL_SCHEME.match(os.fspath(path))
    return match.group(1).lower() if match else None


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs that are not local files (``gs://``, ``ram://``, ...)."""
    return scheme(path) not in (None, "file")


@functools.cache
def _gfile():
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TensorFlow is an install requirement
        return None
    return tf.io.gfile


def _gfile_schemes() -> list[str]:
    gfile = _gfile()
    if gfile is None:  # pragma: no cover
        return []
    return sorted(s for s in gfile.get_registered_schemes() if s and s != "file")


def _epath_knows(url: str) -> bool:
    from etils import epath

    try:
        epath.Path(url)
    except KeyError:  # epath's table of URI schemes has no entry for it
        return False
    return True


def check_usable(url: str, what: str = "workdir", *, checkpoints: bool = False) -> None:
    """Raise a one-line :class:`StorageError` unless the remote ``url`` can be used.

    ``checkpoints``: orbax checkpoints will be read or written there too (they go through
    ``etils.epath`` and, on ``gs://``, google-cloud-storage), not just files.
    """
    name = scheme(url)
    if name is None or name == "file":
        return
    known = _gfile_schemes()
    if name not in known:
        listed = ", ".join(f"{s}://" for s in known) or "none"
        raise StorageError(
            f"{what} '{url}': {name}:// is not a filesystem TensorFlow's tf.io.gfile can open "
            f"here (it has: {listed}; amt_jax writes configs, model records and TensorBoard "
            f"logs through it); {_INSTEAD}"
        )
    rest = url[len(name) + 3 :]
    if not rest.strip("/"):
        raise StorageError(f"{what} '{url}': the URL names no bucket or path")
    if not checkpoints:
        return
    if not _epath_knows(url):
        raise StorageError(
            f"{what} '{url}': orbax checkpoints go through etils.epath, which cannot open "
            f"{name}:// (it knows gs://, s3://, az://, hf:// and local paths); {_INSTEAD}"
        )
    if name == "gs":
        _check_gcs_client(url, what)


def _check_gcs_client(url: str, what: str) -> None:
    """orbax lists gs:// checkpoints with a google-cloud-storage client, which needs
    credentials: both are checked before orbax gets to fail deep inside its manager."""
    try:
        importlib.import_module("google.cloud.storage")
        auth = importlib.import_module("google.auth")
        auth_errors = importlib.import_module("google.auth.exceptions")
    except ImportError:
        raise StorageError(
            f"{what} '{url}': orbax needs google-cloud-storage for checkpoints on gs:// "
            "and it is not installed; pip install 'amt_jax[gcs]' (or google-cloud-storage)"
        ) from None
    try:
        auth.default()
    except auth_errors.DefaultCredentialsError:
        raise StorageError(
            f"{what} '{url}': no Google Cloud credentials found for orbax's storage client; "
            "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
            "(on a GCE / TPU VM the VM's service account is used)"
        ) from None


def resolve(path: str | os.PathLike, what: str = "workdir", *, checkpoints: bool = False) -> str:
    """The form of ``path`` the helpers below take; an unusable URL is a StorageError.

    Local paths are returned as given, ``file://`` URLs as their local path, usable URLs
    without trailing slashes.
    """
    text = os.fspath(path)
    name = scheme(text)
    if name is None:
        return text
    if name == "file":
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{what} '{text}': file:// URLs must name a local path")
        return urllib.parse.unquote(parsed.path)
    check_usable(text, what, checkpoints=checkpoints)
    return text.rstrip("/")


def absolute(path: str) -> str:
    """``os.path.abspath`` for local paths; URLs are already absolute."""
    return path if is_remote(path) else os.path.abspath(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    base = os.fspath(base)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


@contextlib.contextmanager
def errors(path: str) -> Iterator[None]:
    """tf.io.gfile's errors (network, permissions, missing files) as one-line StorageErrors
    (nothing is caught for local paths)."""
    if not is_remote(path):
        yield
        return
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as error:
        message = " ".join(str(error.message).split())
        raise StorageError(f"'{path}': {message[:400]}") from None


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    with errors(path):
        return _gfile().exists(path)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    with errors(path):  # exists() first: isdir() answers False when the bucket is unreachable
        return _gfile().exists(path) and _gfile().isdir(path)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    with errors(path):
        return _gfile().exists(path) and not _gfile().isdir(path)


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    with errors(path):
        _gfile().makedirs(path)


def listdir(path: str) -> list[str]:
    if not is_remote(path):
        return os.listdir(path)
    with errors(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with errors(path), _gfile().GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` whole: locally to a temporary sibling renamed into place; remotely in
    one upload (an object store publishes an object only when it is complete)."""
    if not is_remote(path):
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with errors(path), _gfile().GFile(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def orbax_path(path: str) -> Any:
    """What orbax is given: ``etils.epath.Path`` for URLs (never ``os.path.abspath``-ed),
    the absolute local path otherwise."""
    if not is_remote(path):
        return os.path.abspath(path)
    from etils import epath

    return epath.Path(path)


__all__ = [
    "StorageError",
    "absolute",
    "basename",
    "check_usable",
    "dirname",
    "errors",
    "exists",
    "is_remote",
    "isdir",
    "isfile",
    "join",
    "listdir",
    "makedirs",
    "orbax_path",
    "read_bytes",
    "read_text",
    "resolve",
    "scheme",
    "write_bytes",
    "write_text",
]
