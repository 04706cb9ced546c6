"""Reading files from the server's ingest roots (CLIP_FILTER_INGEST_ROOTS) without ever leaving them.

Rules
- A requested path is resolved once (`resolve_allowed`) and must lie inside a root; NUL bytes, symlink loops
  and unresolvable links are refused as 4xx, never a 500.
- A folder walk (`list_folder`) lists regular files only: FIFOs, devices and sockets are per-file failures
  (a FIFO would block a reader forever), hidden files and folders are skipped unless asked for, links are
  resolved once and must stay inside the roots.
- Reading (`read_regular_file`) opens the file relative to an opened root folder, one component at a time
  with O_NOFOLLOW (`dir_fd`), so a component swapped for a symlink after the listing fails (ELOOP/ENOTDIR)
  instead of being followed out of the root; it opens with O_NONBLOCK and checks `fstat` is a regular file
  before reading, so nothing blocks, and reads at most the size limit from that descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clip_filter.collections.store import JobFile
from clip_filter.core.errors import ClipFilterError

MAX_JOB_FILES = 1_000_000
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_SAFE_OPEN = bool(_NOFOLLOW and _DIRECTORY) and os.open in os.supports_dir_fd  # POSIX; Windows reads plainly


def path_not_allowed(path: str) -> ClipFilterError:
    return ClipFilterError(
        "path_not_allowed",
        f"{path!r} is not inside a folder this server may read; allowed folders are set with CLIP_FILTER_INGEST_ROOTS.",
        403,
        path=path,
    )


def not_a_regular_file(path: str) -> ClipFilterError:
    return ClipFilterError(
        "not_a_regular_file",
        f"{path!r} is not a regular file (a FIFO, device or socket is never read).",
        422,
        path=path,
    )


def unresolvable(path: str) -> ClipFilterError:
    return ClipFilterError(
        "unresolvable_path", f"{path!r} cannot be resolved (a symlink loop or a broken link).", 422, path=path
    )


def inside_roots(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def root_of(path: Path, roots: list[Path]) -> Path | None:
    """The (longest) root `path` lies in."""
    found = [root for root in roots if path == root or path.is_relative_to(root)]
    return max(found, key=lambda root: len(root.parts)) if found else None


def resolve_allowed(path_text: object, roots: list[Path]) -> Path:
    """The real path (symlinks resolved, once) of a requested folder or file, if it lies inside a root."""
    if not isinstance(path_text, str) or not path_text.strip():
        raise ClipFilterError("invalid_request", "`path` must be a non-empty string.", 422)
    if "\x00" in path_text:
        raise ClipFilterError("invalid_request", "`path` contains a NUL character.", 422)
    try:
        requested = Path(path_text).expanduser()
        real = requested.resolve(strict=False)
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop (Python 3.11)
        raise unresolvable(path_text) from None
    if not requested.is_absolute() or not roots or not inside_roots(real, roots):
        raise path_not_allowed(path_text)
    try:
        real.stat()
    except FileNotFoundError:
        raise ClipFilterError("path_not_found", f"{path_text!r} does not exist.", 404, path=path_text) from None
    except OSError:  # ELOOP: a symlink loop that resolve() left in place
        raise unresolvable(path_text) from None
    return real


def _entry(relative: str, error: ClipFilterError) -> dict[str, Any]:
    return {"filename": relative, "code": error.code, "message": error.message}


def list_folder(
    folder: Path, roots: list[Path], supported: Callable[[str], bool], include_hidden: bool = False
) -> tuple[list[JobFile], list[dict[str, Any]]]:
    """Supported regular files under a folder, recursively, in a stable order; failures for the rest."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        raise unresolvable(str(folder)) from None
    if stat.S_ISREG(mode):
        return [JobFile(0, folder.name, str(folder), {})], []
    if not stat.S_ISDIR(mode):
        raise not_a_regular_file(str(folder))
    files: list[JobFile] = []
    failures: list[dict[str, Any]] = []
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        if not include_hidden:
            subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        subdirs.sort()
        for name in sorted(names):
            if (not include_hidden and name.startswith(".")) or not supported(name):
                continue
            candidate = Path(directory, name)
            relative = str(candidate.relative_to(folder))
            try:
                real = candidate.resolve(strict=True)
            except (OSError, RuntimeError, ValueError):
                failures.append(_entry(relative, unresolvable(str(candidate))))
                continue
            if not inside_roots(real, roots):
                failures.append(_entry(relative, path_not_allowed(str(candidate))))
                continue
            try:
                regular = stat.S_ISREG(os.stat(real).st_mode)
            except OSError:
                regular = False
            if not regular:
                failures.append(_entry(relative, not_a_regular_file(str(candidate))))
                continue
            files.append(JobFile(len(files), relative, str(real), {}))
            if len(files) > MAX_JOB_FILES:
                raise ClipFilterError("too_many_files", f"More than {MAX_JOB_FILES} files in one job.", 413)
    return files, failures


def _open_error(path: Path, exc: OSError) -> ClipFilterError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return path_not_allowed(str(path))  # a component is (now) a symlink: never followed
    if exc.errno == errno.ENOENT:
        return ClipFilterError("file_not_found", f"{path} does not exist (any more).", 404)
    if exc.errno == errno.EISDIR:
        return ClipFilterError("not_a_file", f"{path} is a folder.", 422)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ClipFilterError("file_unreadable", f"{path} cannot be read (permission denied).", 403)
    return ClipFilterError("file_unreadable", f"{path} cannot be read: {exc.strerror or exc}", 422)


def _open_beneath(root: Path, path: Path) -> int:
    """A read descriptor of `path`, opened component by component from `root` without following links."""
    parts = path.relative_to(root).parts
    if not parts:  # the root itself names a file
        root, parts = root.parent, (root.name,)
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _NOCTTY | _CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def read_regular_file(path: Path, max_bytes: int, root: Path | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (413 beyond), never blocking on a FIFO or device.

    With `root` (ingest roots) the file is opened beneath it without following any symlink."""
    try:
        if root is not None and _SAFE_OPEN:
            fd = _open_beneath(root, path)
        else:
            fd = os.open(path, os.O_RDONLY | _NONBLOCK | _NOCTTY | _CLOEXEC | getattr(os, "O_BINARY", 0))
    except ValueError:  # NUL in the path
        raise unresolvable(str(path)) from None
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ClipFilterError("not_a_file", f"{path} is a folder.", 422)
        if not stat.S_ISREG(info.st_mode):
            raise not_a_regular_file(str(path))
        if info.st_size > max_bytes:
            raise ClipFilterError(
                "file_too_large",
                f"The file has {info.st_size} bytes; at most {max_bytes} are accepted.",
                413,
                limit=max_bytes,
            )
        chunks: list[bytes] = []
        total = 0
        while True:  # read from this descriptor only, and never more than the limit (the file may grow)
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ClipFilterError(
                    "file_too_large",
                    f"The file has over {max_bytes} bytes; at most {max_bytes} are accepted.",
                    413,
                    limit=max_bytes,
                )
        return b"".join(chunks)
    except OSError as exc:
        raise _open_error(path, exc) from None
    finally:
        os.close(fd)
