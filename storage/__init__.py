"""The bot's state: SQLite for rows, content-addressed files for image bytes. Knows neither Discord
nor the engine's internals (only its plain request and result types)."""

from storage.db import (
    JOB_STATUSES,
    SETTING_FIELDS,
    UNFINISHED,
    ImageNotFound,
    ImageRecord,
    Job,
    JobNotFound,
    JobStateError,
    JobStatus,
    Storage,
    StorageError,
    UserSettings,
)
from storage.files import FileStore, MissingFile
from storage.migrations import LATEST_VERSION, SchemaTooNew

__all__ = [
    "JOB_STATUSES",
    "LATEST_VERSION",
    "SETTING_FIELDS",
    "UNFINISHED",
    "FileStore",
    "ImageNotFound",
    "ImageRecord",
    "Job",
    "JobNotFound",
    "JobStateError",
    "JobStatus",
    "MissingFile",
    "SchemaTooNew",
    "Storage",
    "StorageError",
    "UserSettings",
]
