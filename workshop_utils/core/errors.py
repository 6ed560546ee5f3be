"""One error base (:class:`WorkshopError`, plus the builtin callers catch) and one warning base: the message
names the file, row or value and says what to do; the class says only how to react."""
from __future__ import annotations

from collections.abc import Sequence

SHOW_AT_MOST = 10  # offending rows/values quoted in a message


def listed(items: Sequence, what: str) -> str:
    """For messages: 'lines 2, 5, 9 (3 in all)', the first SHOW_AT_MOST items and the total count."""
    items = list(items)
    more = f", … and {len(items) - SHOW_AT_MOST} more" if len(items) > SHOW_AT_MOST else ""
    return f"{what} {', '.join(str(i) for i in items[:SHOW_AT_MOST])}{more} ({len(items)} in all)"


class WorkshopError(Exception):
    """Base of every error the workshop raises on purpose."""


class ConfigError(WorkshopError, ValueError):
    """A setting, option or argument has a value the workshop cannot use."""


class DatasetError(WorkshopError, ValueError):
    """An index, folder, split or label set cannot be used as a dataset."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's CSV or folder does not exist."""


class MissingImagesError(DatasetError):
    """Rows of an index name image files that are not there."""


class LabelsFileError(WorkshopError, ValueError):
    """A ``labels.txt`` is empty, repeats a name or disagrees with the model."""


class UnknownArchitectureError(WorkshopError, KeyError):
    """No backbone has this name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(WorkshopError, RuntimeError):
    """Pretrained weights cannot be found, downloaded or read."""


class DownloadError(WorkshopError, RuntimeError):
    """A dataset download or its archive failed."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the target folder (or is a link or device)."""


class InvalidImageError(WorkshopError, ValueError):
    """Bytes or a file are not a decodable image (unknown format, corrupt or truncated)."""


class ImageTooLargeError(InvalidImageError):
    """An image has more pixels than allowed (a decompression-bomb guard)."""


class ExportError(WorkshopError, RuntimeError):
    """An export could not be written or failed its check; nothing was left at the destination."""


class ModelFolderError(WorkshopError, OSError):
    """A model folder or saved head is missing, incomplete or unreadable."""


class InteropError(WorkshopError, ValueError):
    """A model from another runtime (frozen graph, Custom Vision export) cannot be read or written."""


class ServeError(WorkshopError, OSError):
    """The web server cannot start (address, port) or stop."""


class QueueFullError(WorkshopError, RuntimeError):
    """The server's scoring queue is full; the client should retry later."""


class UploadError(WorkshopError):
    """An upload the server refuses: carries the HTTP status and a short message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class ToolingError(WorkshopError, RuntimeError):
    """A maintainer's tool (sample painter, publisher, benchmark) cannot do its job."""


class WorkshopWarning(UserWarning):
    """Base of the workshop's warnings: something was skipped or adjusted, and the run goes on."""


class SkippedImagesWarning(WorkshopWarning):
    """Some images could not be decoded and were left out (listed in skipped.csv)."""


class UnscoredImagesWarning(WorkshopWarning):
    """Some images of a batch could not be scored and were reported instead."""


class DataQualityWarning(WorkshopWarning):
    """The data check found duplicates, conflicting labels or train/test overlap."""


class UnseenClassWarning(WorkshopWarning):
    """A class appears in an evaluation set but not in training."""


class StratifyFallbackWarning(WorkshopWarning):
    """A split could not be stratified (a class too small) and was made at random."""


class LeftOutFilesWarning(WorkshopWarning):
    """Files in a dataset folder were not taken as images."""
