"""The bot's state in SQLite: users and their settings, jobs, the images they made, favourites.

State that buttons and restarts depend on lives here and nowhere else, so a button on a week-old
message still finds its job and image. Image bytes live in content-addressed files (see
`storage.files` and docs/storage.md); rows hold their keys. Writes of bytes happen before the
rows that point at them, so a crash can leave an unreferenced file but never a row whose file is
missing.

One `Storage` holds one aiosqlite connection. Its operations are serialised by an asyncio lock,
so one caller's transaction never sees another caller's half-done one on the shared connection;
separate processes (or a second `Storage` on the same file) are kept apart by SQLite itself in
WAL mode, waiting up to `BUSY_TIMEOUT_S` for the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import aiosqlite

from engine.params import PromptDefaults
from engine.types import FinishReason, GenerationRequest, ImageResult, ImagineError
from storage.files import FileStore, MissingFile, sniff_suffix
from storage.migrations import migrate, schema_version

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
UNFINISHED: tuple[JobStatus, ...] = ("queued", "running")
BUSY_TIMEOUT_S = 10.0
MAX_PER_PAGE = 100
#: The request JSON names the init image and mask files under these keys instead of holding bytes.
_FILE_FIELDS = {"init_image": "init_image_file", "mask": "mask_file"}


class StorageError(ImagineError):
    """Something stored is not as the caller expected; the message is fit to show a user."""


class JobNotFound(StorageError, LookupError):
    pass


class ImageNotFound(StorageError, LookupError):
    pass


class JobStateError(StorageError):
    """The job is not in a state that allows this change (finishing a cancelled job, say)."""


@dataclass(frozen=True)
class UserSettings:
    user_id: int
    aspect_ratio: str | None = None
    quality: float | None = None
    negative_prompt: str | None = None
    style: str | None = None
    model: str | None = None
    remix: bool = False
    private: bool = False  # results only visible to the user (ephemeral) where possible

    def to_defaults(self) -> PromptDefaults:
        return PromptDefaults(
            aspect_ratio=self.aspect_ratio,
            quality=self.quality,
            negative_prompt=self.negative_prompt,
            style=self.style,
            model=self.model,
        )


_SETTING_TYPES: dict[str, type] = {"quality": float, "remix": bool, "private": bool}
SETTING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UserSettings) if f.name != "user_id")


@dataclass(frozen=True)
class Job:
    id: int
    user_id: int
    kind: str  # "imagine" | "variation" | "reroll" | "upscale" | "vary" ...
    request: GenerationRequest
    status: JobStatus
    parent_image_id: int | None
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: Whether its results are only for its owner (ephemeral); kept with the job so that a restart
    #: delivers it as it was asked for, not by the owner's setting of the day.
    private: bool = False
    #: Keys of the request's image files that were missing when it was loaded (listings only load
    #: leniently); such a request lacks its init image or mask and must not be run as it is.
    missing_files: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


@dataclass(frozen=True)
class ImageRecord:
    id: int
    job_id: int
    index: int
    seed: int
    width: int
    height: int
    finish_reason: str
    png_path: str  # a file key under the data directory; `Storage.file_path` turns it into a path
    latents_path: str | None
    parameters: str


_JOB_COLUMNS = (
    "id, user_id, kind, request, status, parent_image_id, guild_id, channel_id, message_id, error, "
    "created_at, started_at, finished_at, private"
)
_IMAGE_COLUMNS = "id, job_id, idx, seed, width, height, finish_reason, png_path, latents_path, parameters"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _casefold(text: str | None) -> str | None:
    return None if text is None else text.casefold()


def _like_pattern(search: str) -> str:
    """`%search%` with LIKE's own wildcards in the search taken literally (escape character `\\`)."""
    escaped = search.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _image(row: sqlite3.Row | tuple[Any, ...]) -> ImageRecord:
    return ImageRecord(*row)


class Storage:
    def __init__(self, conn: aiosqlite.Connection, files: FileStore, db_path: Path) -> None:
        """Use `Storage.open`, which prepares the connection and the schema."""
        self._conn = conn
        self.files = files
        self.db_path = db_path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, db_path: str | Path, data_dir: str | Path | None = None) -> Storage:
        """Open (creating if needed) the database and its data directory, and migrate it to the
        latest schema. `data_dir` defaults to `images/` next to the database file."""
        db_path = Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        data_dir = Path(data_dir) if data_dir is not None else db_path.parent / "images"
        data_dir.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(db_path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise StorageError(f"Could not switch {db_path} to WAL mode (got {row and row[0]}).")
            # WAL with synchronous=NORMAL is durable across application crashes, and only a power
            # loss can take back the last commits: the usual trade for a bot's state.
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.create_function("casefold", 1, _casefold, deterministic=True)
            await migrate(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, FileStore(data_dir), db_path)

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    async def schema_version(self) -> int:
        async with self._lock:
            return await schema_version(self._conn)

    def file_path(self, key: str) -> Path:
        """The file behind a stored key (`ImageRecord.png_path`, …), for senders that stream files."""
        return self.files.path(key)

    # -- plumbing --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, taking SQLite's write lock up front (BEGIN IMMEDIATE) so that it
        waits its turn at the start instead of failing with "database is locked" half-way."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk, say); a second
                # rollback then fails, and that must not hide the first error.
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._lock, self._conn.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock, self._conn.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    @staticmethod
    async def _ensure_user(conn: aiosqlite.Connection, user_id: int) -> None:
        await conn.execute(
            "INSERT INTO users (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (user_id, _now())
        )

    async def _put_files(self, items: list[tuple[bytes, str]]) -> list[str]:
        return await asyncio.to_thread(lambda: [self.files.put(data, suffix) for data, suffix in items])

    # -- settings --------------------------------------------------------------------------------

    async def get_settings(self, user_id: int) -> UserSettings:
        row = await self._fetchone(
            f"SELECT {', '.join(SETTING_FIELDS)} FROM settings WHERE user_id = ?", (user_id,)
        )
        if row is None:
            return UserSettings(user_id)
        values = dict(zip(SETTING_FIELDS, row, strict=True))
        values["remix"] = bool(values["remix"])
        values["private"] = bool(values["private"])
        return UserSettings(user_id, **values)

    async def update_settings(self, user_id: int, **changes: Any) -> UserSettings:
        """Change some settings and keep the rest; None puts a setting back to the model's default."""
        unknown = sorted(set(changes) - set(SETTING_FIELDS))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTING_FIELDS)}")
        clean = {}
        for name, value in changes.items():
            kind = _SETTING_TYPES.get(name, str)
            if kind is bool:
                clean[name] = int(bool(value))
            elif value is None:
                clean[name] = None
            else:
                clean[name] = kind(value)
        async with self._transaction() as conn:
            await self._ensure_user(conn, user_id)
            await conn.execute("INSERT INTO settings (user_id) VALUES (?) ON CONFLICT DO NOTHING", (user_id,))
            if clean:
                assignments = ", ".join(f"{name} = ?" for name in clean)
                await conn.execute(
                    f"UPDATE settings SET {assignments} WHERE user_id = ?", (*clean.values(), user_id)
                )
        return await self.get_settings(user_id)

    # -- jobs ------------------------------------------------------------------------------------

    async def create_job(
        self,
        user_id: int,
        request: GenerationRequest,
        *,
        kind: str = "imagine",
        parent_image_id: int | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        private: bool = False,
    ) -> Job:
        """Record a queued job. The init image and mask go to files first; the row keeps their keys."""
        request_json = await self._request_json(request)
        now = _now()
        async with self._transaction() as conn:
            await self._ensure_user(conn, user_id)
            cursor = await conn.execute(
                "INSERT INTO jobs (user_id, kind, request, prompt, status, parent_image_id, guild_id, "
                "channel_id, created_at, private) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (user_id, kind, request_json, request.prompt, parent_image_id, guild_id, channel_id, now, int(private)),
            )
            job_id = cursor.lastrowid
        assert job_id is not None
        return Job(
            id=job_id,
            user_id=user_id,
            kind=kind,
            request=request,
            status="queued",
            parent_image_id=parent_image_id,
            guild_id=guild_id,
            channel_id=channel_id,
            message_id=None,
            error=None,
            created_at=datetime.fromisoformat(now),
            started_at=None,
            finished_at=None,
            private=private,
        )

    async def _request_json(self, request: GenerationRequest) -> str:
        images = [
            (name, getattr(request, name)) for name in _FILE_FIELDS if getattr(request, name) is not None
        ]
        keys = await self._put_files([(data, sniff_suffix(data)) for _, data in images])
        data = json.loads(request.replace(init_image=None, mask=None).to_json())
        for (name, _), key in zip(images, keys, strict=True):
            data[_FILE_FIELDS[name]] = key
        return json.dumps(data, sort_keys=True)

    async def _load_request(
        self, text: str, strict: bool = True
    ) -> tuple[GenerationRequest, tuple[str, ...]]:
        """The stored request with its image bytes read back from their files, and the keys of
        any files that are missing.

        With `strict=False` (listings) a missing file leaves that field None instead of failing.
        """
        data = json.loads(text)
        request = GenerationRequest.from_json(text)
        keys = {name: data[key] for name, key in _FILE_FIELDS.items() if data.get(key)}
        if not keys:
            return request, ()

        def read() -> tuple[dict[str, bytes | None], tuple[str, ...]]:
            loaded: dict[str, bytes | None] = {}
            missing: list[str] = []
            for name, key in keys.items():
                try:
                    loaded[name] = self.files.get(key)
                except MissingFile:
                    if strict:
                        raise
                    log.warning("file %s of a stored request is missing", key)
                    loaded[name] = None
                    missing.append(key)
            return loaded, tuple(missing)

        loaded, missing = await asyncio.to_thread(read)
        return request.replace(**loaded), missing

    async def _job(self, row: sqlite3.Row | tuple[Any, ...], strict: bool = True) -> Job:
        (job_id, user_id, kind, request, status, parent, guild, channel, message, error, created, started,
         finished, private) = row  # fmt: skip
        loaded, missing = await self._load_request(request, strict)
        return Job(
            id=job_id,
            user_id=user_id,
            kind=kind,
            request=loaded,
            status=status,
            parent_image_id=parent,
            guild_id=guild,
            channel_id=channel,
            message_id=message,
            error=error,
            created_at=datetime.fromisoformat(created),
            started_at=_time(started),
            finished_at=_time(finished),
            private=bool(private),
            missing_files=missing,
        )

    async def set_message(self, job_id: int, channel_id: int | None, message_id: int | None) -> None:
        """Remember the message that shows the job, so a restart can edit it."""
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET channel_id = ?, message_id = ? WHERE id = ?",
                (channel_id, message_id, job_id),
            )
            if cursor.rowcount == 0:
                raise JobNotFound(f"Job #{job_id} does not exist.")

    async def _status(self, conn: aiosqlite.Connection, job_id: int) -> str:
        async with conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise JobNotFound(f"Job #{job_id} does not exist.")
        return str(row[0])

    async def mark_running(self, job_id: int) -> None:
        """Queued -> running. A job that was already running (resumed after a restart) restarts its clock."""
        async with self._transaction() as conn:
            status = await self._status(conn, job_id)
            if status not in UNFINISHED:
                raise JobStateError(f"Job #{job_id} is {status}; it cannot start.")
            await conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?", (_now(), job_id)
            )

    async def finish_job(
        self, job_id: int, results: list[ImageResult], grid_png: bytes | None = None
    ) -> list[ImageRecord]:
        """Store a job's images and mark it done.

        All files are written first and the rows then go in one transaction, so the job is either
        done with every image or untouched. Raises JobStateError if the job was meanwhile
        cancelled or failed (its files are then unreferenced and harmless).
        """
        async with self._lock:
            status = await self._status(self._conn, job_id)
        if status not in UNFINISHED:
            raise JobStateError(f"Job #{job_id} is {status}; its results were not stored.")
        items: list[tuple[bytes, str]] = []
        for result in results:
            items.append((result.png, ".png"))
            if result.latents is not None:
                items.append((result.latents, ".safetensors"))
        if grid_png is not None:
            items.append((grid_png, ".png"))
        keys = iter(await self._put_files(items))
        rows = []
        for result in results:
            png_key = next(keys)
            latents_key = next(keys) if result.latents is not None else None
            rows.append(
                (
                    job_id,
                    result.index,
                    result.seed,
                    result.width,
                    result.height,
                    FinishReason(result.finish_reason).value,
                    png_key,
                    latents_key,
                    result.parameters,
                )
            )
        grid_key = next(keys) if grid_png is not None else None
        async with self._transaction() as conn:
            status = await self._status(conn, job_id)
            if status not in UNFINISHED:
                raise JobStateError(f"Job #{job_id} is {status}; its results were not stored.")
            await conn.executemany(
                "INSERT INTO images (job_id, idx, seed, width, height, finish_reason, png_path, latents_path, "
                "parameters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            await conn.execute(
                "UPDATE jobs SET status = 'done', error = NULL, grid_path = ?, finished_at = ? WHERE id = ?",
                (grid_key, _now(), job_id),
            )
            async with conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
            ) as cursor:
                return [_image(row) for row in await cursor.fetchall()]

    async def _finish_unfinished(self, job_id: int, status: JobStatus, error: str | None) -> bool:
        async with self._transaction() as conn:
            await self._status(conn, job_id)  # raises JobNotFound
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ? "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (status, error, _now(), job_id),
            )
            return cursor.rowcount > 0

    async def fail_job(self, job_id: int, error: str) -> bool:
        """Mark an unfinished job failed with a message fit for its owner; returns False (and
        changes nothing) if it had already finished."""
        return await self._finish_unfinished(job_id, "failed", error)

    async def cancel_job(self, job_id: int) -> bool:
        """Mark an unfinished job cancelled; returns False (and changes nothing) if it had finished."""
        return await self._finish_unfinished(job_id, "cancelled", None)

    async def get_job(self, job_id: int) -> Job | None:
        """The job with its full request; raises MissingFile if its init image file is gone."""
        row = await self._fetchone(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else await self._job(row)

    async def unfinished_jobs(self) -> list[Job]:
        """Queued and running jobs, oldest first: what a restart must resume or fail visibly.

        A job whose init image or mask file is gone is still returned, without those bytes and
        with `missing_files` set, so that the caller can fail it visibly instead of running a
        different job than was asked.
        """
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY id"
        )
        return [await self._job(row, strict=False) for row in rows]

    async def history(
        self, user_id: int, search: str | None = None, page: int = 0, per_page: int = 10
    ) -> tuple[list[Job], int]:
        """One page of the user's jobs, newest first, and how many match in all.

        `search` matches anywhere in the prompt, ignoring case (Unicode case folding, so "Ö" finds
        "ö"); `%` and `_` in it are taken literally.
        """
        if page < 0 or not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"page must be >= 0 and per_page from 1 to {MAX_PER_PAGE}")
        where, params = "user_id = ?", [user_id]
        if search and search.strip():
            where += " AND casefold(prompt) LIKE ? ESCAPE '\\'"
            params.append(_like_pattern(search.strip()))
        total_row = await self._fetchone(f"SELECT count(*) FROM jobs WHERE {where}", params)
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, per_page, page * per_page],
        )
        total = int(total_row[0]) if total_row else 0
        return [await self._job(row, strict=False) for row in rows], total

    # -- images ----------------------------------------------------------------------------------

    async def job_images(self, job_id: int) -> list[ImageRecord]:
        rows = await self._fetchall(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
        )
        return [_image(row) for row in rows]

    async def get_image(self, image_id: int) -> ImageRecord | None:
        row = await self._fetchone(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,))
        return None if row is None else _image(row)

    async def image_for(self, job_id: int, index: int) -> ImageRecord | None:
        row = await self._fetchone(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id = ? AND idx = ?", (job_id, index)
        )
        return None if row is None else _image(row)

    async def read_png(self, image: ImageRecord) -> bytes:
        return await asyncio.to_thread(self.files.get, image.png_path)

    async def read_latents(self, image: ImageRecord) -> bytes | None:
        if image.latents_path is None:
            return None
        return await asyncio.to_thread(self.files.get, image.latents_path)

    async def read_grid(self, job_id: int) -> bytes | None:
        row = await self._fetchone("SELECT grid_path FROM jobs WHERE id = ?", (job_id,))
        if row is None or row[0] is None:
            return None
        return await asyncio.to_thread(self.files.get, row[0])

    async def store_upload(self, data: bytes) -> str:
        """Keep an uploaded image (an init image) and return its file key; the same bytes give the
        same key."""
        if not data:
            raise ValueError("an upload must not be empty")
        (key,) = await self._put_files([(data, sniff_suffix(data))])
        return key

    # -- favourites ------------------------------------------------------------------------------

    async def toggle_favorite(self, user_id: int, image_id: int) -> bool:
        """Favourite the image, or unfavourite it if it was; returns whether it is a favourite now."""
        async with self._transaction() as conn:
            async with conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)) as cursor:
                if await cursor.fetchone() is None:
                    raise ImageNotFound(f"Image #{image_id} does not exist.")
            await self._ensure_user(conn, user_id)
            cursor = await conn.execute(
                "DELETE FROM favorites WHERE user_id = ? AND image_id = ?", (user_id, image_id)
            )
            if cursor.rowcount:
                return False
            await conn.execute(
                "INSERT INTO favorites (user_id, image_id, created_at) VALUES (?, ?, ?)",
                (user_id, image_id, _now()),
            )
            return True

    async def favorites(self, user_id: int) -> list[ImageRecord]:
        """The user's favourite images, most recently favourited first."""
        columns = ", ".join(f"i.{column.strip()}" for column in _IMAGE_COLUMNS.split(","))
        rows = await self._fetchall(
            f"SELECT {columns} FROM favorites f JOIN images i ON i.id = f.image_id "
            "WHERE f.user_id = ? ORDER BY f.rowid DESC",
            (user_id,),
        )
        return [_image(row) for row in rows]
