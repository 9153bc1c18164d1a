"""Round directories on object storage: ``--round-dir s3://bucket/rounds/r1``.

The round protocol (:mod:`hub.fed.round`, contribute, aggregate, finalize)
works on a folder. Given a URL (the flag, or ``fed.rounds_dir`` as a URL),
each role's command works in a private temporary folder instead: it
downloads what that role reads, runs unchanged, and only if it succeeded
uploads the files it wrote, each with a conditional write
(:func:`hub.blobs.put_new`: ``If-None-Match: *`` on S3), so two contributors,
two aggregators or two key holders never overwrite each other, and a failed
command leaves nothing behind. The store is untrusted like a shared folder:
what is downloaded is checked by the same signatures and hashes; every
download is bounded before it is read; keys no round file can have are ignored.
Object keys are the folder's relative paths (``round.json``,
``contributions/<team>.fedc``); they are lower-case, so are team names and
round ids in such a round.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from hub.blobs import check_key, get_bounded, open_blobs, put_new
from hub.errors import HubError, ValidationError
from hub.fed.round import AGGREGATE, CONTRIBUTIONS, PUBLIC_CONTEXT, ROUND_FILE, check_name

MAX_ROUND_FILE_BYTES = 4 << 30
"""Largest round file downloaded (checked before its body is read)."""

_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.ASCII)
_CONTRIBUTION = re.compile(rf"{CONTRIBUTIONS}/([A-Za-z0-9][A-Za-z0-9._-]{{0,63}})\.fedc")
_TAKEN = {
    ROUND_FILE: "the round already exists: pick a new round id",
    PUBLIC_CONTEXT: "the round already exists: pick a new round id",
    AGGREGATE: "the round is already aggregated",
}


def is_url(value: Any) -> bool:
    """Whether a ``--round-dir`` value is a blob-store URL (``s3://...``), not a folder."""
    return isinstance(value, str) and bool(_URL.match(value))


class RoundDirParam(click.ParamType):
    """``--round-dir``: a folder (a :class:`~pathlib.Path`) or a blob-store URL (a ``str``)."""

    name = "DIR|URL"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | str:
        if isinstance(value, Path) or not is_url(value):
            return Path(value)
        return str(value).rstrip("/")


def round_file(key: str) -> bool:
    """Whether ``key`` names a file of a round folder (anything else in the store is ignored)."""
    return key in (ROUND_FILE, PUBLIC_CONTEXT, AGGREGATE) or bool(_CONTRIBUTION.fullmatch(key))


def _wanted(role: str, team: str | None) -> Callable[[str], bool]:
    """What ``role`` reads: the manifest always; a contributor its context and its own file."""
    if role == "init":
        return lambda key: key == ROUND_FILE
    if role == "contribute":
        own = f"{CONTRIBUTIONS}/{team}.fedc"
        return lambda key: key in (ROUND_FILE, PUBLIC_CONTEXT, own)
    return lambda key: True  # aggregate and finalize read every contribution


@contextlib.contextmanager
def staged_round(
    url: str, role: str, *, team: str | None, hub: Any, settings: Any, home: Path
) -> Iterator[Path]:
    """A local folder holding what ``role`` needs of the round at ``url``; files written
    there are uploaded (conditionally) when the block succeeds. Errors name ``url``."""
    store = open_blobs(url, hub=hub, settings=settings, home=home)
    wanted = _wanted(role, team)
    with tempfile.TemporaryDirectory(prefix="qlora-hub-round-") as tmp:
        root = Path(tmp)
        (root / CONTRIBUTIONS).mkdir()  # a folder round has it from init on; S3 has no folders
        fetched = set()
        for key in store.keys(""):
            if round_file(key) and wanted(key):
                path = root / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(get_bounded(store, key, MAX_ROUND_FILE_BYTES))
                fetched.add(key)
        try:
            yield root
        except HubError as exc:  # name the round's URL, not a folder that is about to vanish
            raise type(exc)(str(exc).replace(str(root), url)) from None
        for key in _written(root, fetched):
            upload(store, url, key, (root / key).read_bytes())


def _written(root: Path, fetched: set[str]) -> list[str]:
    """Round files written under ``root`` and not downloaded; the manifest last."""
    keys = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
    ]
    new = [k for k in keys if k not in fetched and round_file(k)]
    return sorted(new, key=lambda k: (k == ROUND_FILE, k))  # a round is listed once whole


def upload(store: Any, url: str, key: str, data: bytes) -> None:
    """Write one round file unless the key exists; refuse in one line when it does."""
    try:
        check_key(key)
    except ValueError:
        raise ValidationError(
            f"{key!r} cannot be stored at {url}: object keys are lower-case; use lower-case "
            "team names and round ids for a round on object storage"
        ) from None
    if not put_new(store, key, data):
        match = _CONTRIBUTION.fullmatch(key)
        why = (
            f"team {match.group(1)!r} already contributed: each team contributes once"
            if match
            else _TAKEN.get(key, "another process wrote it")
        )
        raise ValidationError(f"{url}/{key} exists (written meanwhile by another process): {why}")
    click.echo(f"uploaded {key} to {url}/{key}", err=True)


def round_url(state: Any, explicit: Path | str | None, round_id: str) -> str | None:
    """The round's URL: ``--round-dir`` as a URL, else ``fed.rounds_dir`` as one (plus the
    round id); None when the round is a folder."""
    if is_url(explicit):
        return str(explicit)
    base = state.settings.get("fed.rounds_dir") if explicit is None else None
    if is_url(base):
        return f"{str(base).rstrip('/')}/{check_name('round id', round_id)}"
    return None


def staged_round_dir(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a ``fed`` role command (beneath ``pass_state``) so that a round URL runs it
    in a :func:`staged_round` folder, passed on as ``round_dir``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def run(state: Any, *args: Any, **kwargs: Any) -> Any:
            url = round_url(state, kwargs.get("round_dir"), kwargs["round_id"])
            if url is None:
                return command(state, *args, **kwargs)
            team = kwargs.get("team") or state.settings.get("hub.team")
            with staged_round(
                url, role, team=team, hub=state.hub, settings=state.settings, home=state.home
            ) as local:
                return command(state, *args, **{**kwargs, "round_dir": local})

        return run

    return decorate
