"""The one writer: atomic file writes, plus the checks that a folder can take them.

:func:`atomic_open` writes through a temporary file in the destination folder, fsyncs, then renames it over the
target: a reader (or a run resumed after ``kill -9``) sees either the old file or the complete new one, never a
partial file. Files get the usual ``0666 & ~umask`` mode (``mkstemp`` alone would make them 0600, unreadable to a
team sharing results). A full disk, a read-only folder or a folder under a file is a one-line :class:`OutputError`
naming the path, and the old file stays as it was. :func:`real_folder` refuses a symbolic link among the folders
under an output folder (writes and deletions never go through one). Also :func:`jsonable`, which makes values safe
for the strict JSON those files hold.
"""

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from riskdecomp.utils.errors import OutputError


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_error(exc: OSError, path: Path) -> OutputError:
    """A one-line error for an OSError met while writing ``path``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"{path}: the disk is full (no space left on device); nothing was overwritten")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: not writable ({exc.strerror or 'permission denied'})")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) or isinstance(exc, (NotADirectoryError, FileExistsError)):
        return OutputError(f"{path}: is (or is under) a file, not a folder")
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


@contextmanager
def atomic_open(path: Path):
    """Binary file to write ``path`` through: a temporary file in the same folder, fsynced and renamed into place
    when the block ends, removed if it raises (a reader never sees a partial file)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise output_error(exc, path) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_csv(df, path) -> None:
    """A data frame as CSV, atomically: no index, ``\\n`` line ends and floats as ``%.10g`` (ten significant
    digits: the bytes do not depend on the last bits of a float, which differ between machines and BLAS builds),
    also in a column of plain numbers that pandas holds as objects (e.g. after concatenating frames with None).
    Every CSV riskdecomp writes goes through here."""
    def numbers(col) -> bool:
        vals = col.dropna()
        return len(vals) > 0 and all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
                                     for v in vals)

    mixed = [c for c in df.columns if df[c].dtype == object and numbers(df[c])]
    if mixed:
        df = df.copy()
        for c in mixed:
            df[c] = df[c].astype(float)
    atomic_write_text(Path(path), df.to_csv(index=False, float_format="%.10g", lineterminator="\n"))


def real_folder(root, *parts) -> Path:
    """``root/parts/...``: a folder riskdecomp writes to or deletes from under an output folder ``root`` (``runs/``,
    ``per_sample/``, ``plots/``, ...). ``root`` itself may be a link the user chose; every folder below it must be a
    real folder (or not exist yet): a symbolic link there would take writes and deletions outside ``root``, so it is a
    one-line :class:`OutputError` (never followed). Every writer and deleter under ``--out`` gets its folder here."""
    path = Path(root)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise OutputError(f"{path} is a symbolic link; riskdecomp writes only to real folders under --out "
                              f"({root})")
    return path


def _roots() -> set:
    home = Path.home().resolve()
    return {Path(p).resolve() for p in (os.sep, home, home.parent)}


def check_writable_dir(path, what: str = "--out") -> Path:
    """Make sure ``path`` is a folder that writes can go to, before any compute: create it (and its parents), write
    and remove a probe file. Refuses a filesystem root, the home folder and the folder of home folders (results
    would be strewn among the user's files). One-line :class:`OutputError` naming ``what`` and the path."""
    path = Path(path).expanduser()
    if path.resolve() in _roots():
        raise OutputError(f"{what} {path}: refusing to write results into a filesystem root or a home folder; "
                          f"give a folder of its own (e.g. {path / 'results'})")
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        err = output_error(exc, path)
        raise OutputError(f"{what} {err}") from None
    return path


def jsonable(x):
    """``x`` with numpy scalars made plain Python and non-finite floats made None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
