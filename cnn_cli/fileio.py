"""Files that are written whole or not at all, and files read without trust.

Every output goes to a temporary name in the destination folder and is moved
into place with ``os.replace``, so a crash, a full disk or Ctrl-C never leaves
a half-written file at a final path. Temporary names start with a dot and
end in a form of our own (``temporary_kind``), short enough for any file
name, so a later run can tell a killed run's leftovers from the user's files
and remove them (``remove_stale``).

Outputs replace only regular files, folders and links (``check_output``):
never a device node, a pipe or a socket, even with ``--force``. Inputs are
opened only when they are regular files, and their size is checked first
(``open_regular``), so a FIFO or ``/dev/zero`` never blocks or fills memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import math
import mmap
import os
import re
import shutil
import stat
import struct
import tempfile
import tokenize
import zipfile
from pathlib import Path

import numpy as np

try:  # ISA-L's CRC-32 (write_npz); zlib's, the same numbers 3.4 times slower, where it is not installed
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on the platform
    from zlib import crc32 as _crc32

#: Refuse npz members that declare more than this many bytes (2 GiB), and
#: files whose members declare more than MAX_TOTAL_BYTES together.
MAX_ARRAY_BYTES = 2 * 2**30
MAX_TOTAL_BYTES = 4 * 2**30

#: Members are inflated in pieces of this size into the array they declare,
#: so memory never exceeds the declared (and checked) size, however well a
#: member compresses: sparse weights may legitimately expand a hundredfold.
READ_CHUNK = 16 * 2**20

#: The longest file name we create (bytes); POSIX file systems allow 255.
NAME_MAX = 255


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Temporary files and folders are created private (0600 / 0700); finished
#: outputs get the usual modes for this process's umask before they appear.
FILE_MODE = 0o666 & ~_current_umask()
DIR_MODE = 0o777 & ~_current_umask()


class NpzError(ValueError):
    """An npz file is missing, damaged, or holds something we will not load."""


class NotRegularFileError(OSError):
    """A path is a device node, pipe or socket where a regular file or folder must be.

    An ``OSError``, so a command's "cannot write" handling reports it; its
    ``strerror`` is the whole message, path included.
    """

    def __init__(self, path, what, reading=False):
        message = (f"{path}: is {what}, not a regular file; cnn reads only regular files" if reading else
                   f"{path}: is {what}, not a regular file or folder; cnn never writes over one, "
                   "even with --force")
        super().__init__(errno.EINVAL, message)


_SPECIAL_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def special_kind(mode):
    """What a stat mode is when it is neither a regular file, a folder nor a link; else None."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return next((what for test, what in _SPECIAL_KINDS if test(mode)), "a special file")


def check_output(path):
    """Refuse (NotRegularFileError) an output path that is a device node, pipe or socket.

    A missing path, a regular file, a folder or a link passes: the caller's
    own rules (--force, replacing a link rather than its target) apply to
    them. Every atomic write calls this just before it replaces anything, and
    a command may call it up front to fail before doing any work.
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: {exc.strerror}") from None
    what = special_kind(mode)
    if what:
        raise NotRegularFileError(path, what)


def open_regular(path, max_bytes=None, what="a file"):
    """Open ``path`` for binary reading if it is a regular file of at most ``max_bytes``.

    A device node is never opened (opening one can have effects). The file is
    opened without blocking (a FIFO with no writer would wait forever) and
    checked again through the open descriptor, so nothing can swap it between
    the check and the read. Raises FileNotFoundError,
    IsADirectoryError, NotRegularFileError, or ValueError when it is larger
    than ``max_bytes``; the messages name ``path``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        special = special_kind(os.stat(path).st_mode)  # never open a device: opening one can act
        if special:
            raise NotRegularFileError(path, special, reading=True)
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, f"{path}: is a folder, not {what}") from None
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{path}: no such file") from None
    except NotRegularFileError:
        raise
    except OSError as exc:  # the message names the path, as ours do
        raise type(exc)(exc.errno, f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{path}: is a folder, not {what}")
        special = special_kind(info.st_mode)
        if special:
            raise NotRegularFileError(path, special, reading=True)
        if max_bytes is not None and info.st_size > max_bytes:
            raise ValueError(f"{path}: {info.st_size:,} bytes is larger than {what} can be "
                             f"(the limit is {max_bytes:,} bytes)")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~getattr(os, "O_NONBLOCK", 0))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# --------------------------------------------------------------------------- temporary names

#: The temporary names we create, by kind: ``.NAME.<8>.tmp[SUFFIX]`` files
#: (atomic_path), ``.NAME.partial`` folders (cnn apply's staging) and
#: ``.NAME.old.<8>`` folders (replace_dir). NAME is shortened with a hash
#: when the whole name would be too long.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<tmp>[a-z0-9_]{8}\.tmp(?:\.[A-Za-z0-9]+)?)|(?P<partial>partial)"
                        r"|(?P<old>old\.[a-z0-9_]{8}))$", re.DOTALL)


def temporary_name(final_name, tail, reserve=0):
    """``.<final_name><tail>``, with ``final_name`` shortened (keeping a hash of it)
    when the result, plus ``reserve`` bytes that the caller appends, would be
    longer than NAME_MAX bytes."""
    encoded = os.fsencode(final_name)
    room = NAME_MAX - 1 - len(os.fsencode(tail)) - reserve
    if len(encoded) <= room:
        return f".{final_name}{tail}"
    digest = _name_hash(final_name)
    head = os.fsdecode(encoded[:room - len(digest) - 1])
    return f".{head}~{digest}{tail}"


def temporary_kind(name):
    """"file", "partial" or "old" for a name of our temporary forms, else None."""
    match = _TEMPORARY.match(name)
    if not match:
        return None
    return "file" if match["tmp"] else "partial" if match["partial"] else "old"


def _temporary_of(name, final_name):
    """Whether ``name``, one of our temporary names, was made for ``final_name``
    (whole, or shortened with its hash by ``temporary_name``)."""
    stem = _TEMPORARY.match(name)["name"]
    return stem == final_name or stem.endswith("~" + _name_hash(final_name))


def _name_hash(final_name):
    return hashlib.sha1(os.fsencode(final_name)).hexdigest()[:12]


def remove_stale(folder, kinds=("file", "partial", "old"), of=None):
    """Remove temporary files and folders of ``kinds`` in ``folder`` (not below it); return their names.

    Only a caller that holds the lock on the place it writes may call this:
    then no other cnn process is writing there, and any such entry was left
    by a run that was killed. ``of`` (final names) limits it to the
    temporaries of those outputs, for a lock that covers only them.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        kind = temporary_kind(entry.name)
        if kind not in kinds or (of is not None and not any(_temporary_of(entry.name, n) for n in of)):
            continue
        try:
            if kind == "file" and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            elif kind != "file" and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                continue
        except OSError:
            continue
        removed.append(entry.name)
    return sorted(removed)


@contextlib.contextmanager
def held_lock(path, busy):
    """Hold an exclusive lock on the file ``path`` while the block runs; ValueError
    (``busy``, naming the lock) when another process holds it.

    The lock file is removed when the block ends. A process that opened it
    just before then holds a lock on a file no longer there, so after
    locking, it checks that the file it locked is still the one at the path.
    """
    path = Path(path)
    while True:
        try:
            fh = open(path, "a")
        except OSError as exc:
            raise ValueError(f"cannot create the lock {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ValueError(f"{busy} (it holds {path}); wait for it to finish or choose another -o") from None
        try:
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fh.close()


@contextlib.contextmanager
def atomic_path(final, suffix=""):
    """Yield a temporary path next to ``final``; move it onto ``final`` on success.

    On any exception the temporary file is removed and ``final`` is untouched.
    ``final`` must not be a device node, pipe or socket (NotRegularFileError).
    """
    final = Path(final)
    check_output(final)
    prefix = temporary_name(final.name, ".", reserve=8 + len(f".tmp{suffix}"))  # mkstemp adds 8 characters
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{suffix}", dir=final.parent)
    try:
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        check_output(final)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_writable(final):
    """Raise OSError unless a file can be written atomically at ``final`` (a temporary file is
    made beside it and removed). Commands call this before long work, so a run that could
    never save its result is refused at once."""
    final = Path(final)
    check_output(final)
    fd, tmp = tempfile.mkstemp(prefix=temporary_name(final.name, ".", reserve=12), suffix=".tmp", dir=final.parent)
    try:
        os.close(fd)
    finally:  # a signal's exception may land between the two calls (SIGTERM left one once)
        os.unlink(tmp)


def write_bytes_atomic(final, data):
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def save_npz_atomic(final, arrays):
    """``np.savez`` to ``final`` atomically (uncompressed: fast to write and to memory-map), by
    ``write_npz``, past the page cache where the file system allows (``DirectFile``)."""
    with atomic_path(final, ".npz") as tmp, DirectFile(tmp) as fh:
        write_npz(fh, arrays)


#: DirectFile writes DIRECT_CHUNK bytes at a time from page-aligned buffers it reuses (their pages stay
#: this process's), at offsets and lengths that are multiples of a page, which any logical block divides.
DIRECT_CHUNK, DIRECT_ALIGN = 4 * 2**20, 4096
_direct_buffers = []


class DirectFile(contextlib.AbstractContextManager):
    """``path`` (it exists) written from its start past the page cache (O_DIRECT): ``write``, ``tell``.

    Buffered, each page the page cache takes is faulted in again on a virtual machine that hands
    free memory back to its host (free page reporting, as here): an image's 30 MB of maps took 112
    ms of CPU, where this took 8 (a copy into a reused buffer, then DMA; 35 ms of wall time), and a
    run's gigabytes no longer push out what the cache held. Where the file system refuses it (EINVAL:
    no O_DIRECT, or another alignment) the cache takes the rest. A file is complete once closed
    without an exception."""

    def __init__(self, path):
        self.name, self.written, self.filled = str(path), 0, 0
        flags, direct = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, getattr(os, "O_DIRECT", 0)
        try:
            self.fd, self.direct = os.open(path, flags | direct), bool(direct)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not direct:
                raise
            self.fd, self.direct = os.open(path, flags), False
        self.buffer = _direct_buffers.pop() if _direct_buffers else mmap.mmap(-1, DIRECT_CHUNK)
        self.view = np.frombuffer(self.buffer, np.uint8)

    def __exit__(self, kind, *_):
        try:
            if kind is None:  # the tail, padded to a block with what the buffer held, then cut off
                end = self.tell()
                self._write_out(-(-self.filled // DIRECT_ALIGN) * DIRECT_ALIGN)
                os.ftruncate(self.fd, end)
        finally:
            os.close(self.fd)
            _direct_buffers.append(self.buffer)

    def tell(self):
        return self.written + self.filled

    def write(self, data):
        data = np.frombuffer(data, np.uint8)
        while len(data):
            take = min(len(data), DIRECT_CHUNK - self.filled)
            self.view[self.filled:self.filled + take] = data[:take]
            self.filled, data = self.filled + take, data[take:]
            if self.filled == DIRECT_CHUNK:
                self._write_out(DIRECT_CHUNK)

    def _write_out(self, length):
        done = 0
        while done < length:
            try:
                done += os.write(self.fd, memoryview(self.buffer)[done:length])
            except OSError as exc:  # a short write leaves the rest unaligned too
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False
        self.written, self.filled = self.written + self.filled, 0


#: The zip records ``write_npz`` writes, laid out and filled in as ``zipfile`` does for
#: ``np.savez`` (APPNOTE.TXT 4.3): stored members, each with a zip64 extra field
#: in its local header (numpy forces zip64: gh-10776), dated 1980-01-01 00:00,
#: readable by their owner only.
_ZIP_LOCAL, _ZIP_LOCAL_SIGNATURE = struct.Struct("<4s2B4HL2L2H"), b"PK\x03\x04"
_ZIP_CENTRAL, _ZIP_CENTRAL_SIGNATURE = struct.Struct("<4s4B4HL2L5H2L"), b"PK\x01\x02"
_ZIP_END, _ZIP_END_SIGNATURE = struct.Struct("<4s4H2LH"), b"PK\x05\x06"
_ZIP64_END, _ZIP64_END_SIGNATURE = struct.Struct("<4sQ2H2L4Q"), b"PK\x06\x06"
_ZIP64_LOCATOR, _ZIP64_LOCATOR_SIGNATURE = struct.Struct("<4sLQL"), b"PK\x06\x07"
_ZIP64_SIZES = struct.Struct("<HHQQ")  # tag 1, its length, then the sizes
_ZIP64_VERSION, _ZIP_UNIX, _ZIP_UTF8_NAME, _ZIP_FILE_ATTRIBUTES = 45, 3, 1 << 11, 0o600 << 16
_DOS_DATE, _DOS_TIME = 1 << 5 | 1, 0


def write_npz(fh, arrays):
    """Write ``arrays`` (name -> array) to the binary file ``fh`` byte for byte as ``np.savez`` does.

    numpy's ``zipfile`` copies each array to bytes, takes zlib's CRC-32, then seeks back to fill in
    the header. Here each C-ordered array goes out from its memory behind a header whose CRC (ISA-L's
    where installed) and sizes are known first. One image's 29.6 MB of maps (default pipeline, 512²):
    zipfile took 22 ms of CPU, zlib's CRC 8.4 of them; ISA-L's takes 2.5 and releases the GIL. An
    array numpy writes otherwise (not C-ordered, objects, a version 3.0 header) sends the whole file
    through ``zipfile``."""
    members = [_npz_member(name, value) for name, value in arrays.items()]
    if None in members:
        _write_npz_by_zipfile(fh, arrays)
        return
    try:
        start = fh.tell()
    except (AttributeError, OSError):  # zipfile, too, counts from 0 where it cannot tell
        start = 0
    directory, offset = [], start
    for name, flags, npy_header, data in members:
        crc = _crc32(data, _crc32(npy_header))
        size = len(npy_header) + data.nbytes
        fh.write(_ZIP_LOCAL.pack(_ZIP_LOCAL_SIGNATURE, _ZIP64_VERSION, 0, flags, zipfile.ZIP_STORED, _DOS_TIME,
                                 _DOS_DATE, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), _ZIP64_SIZES.size)
                 + name + _ZIP64_SIZES.pack(1, _ZIP64_SIZES.size - 4, size, size) + npy_header)
        fh.write(data)
        directory.append(_central_entry(name, flags, crc, size, offset))
        offset += _ZIP_LOCAL.size + len(name) + _ZIP64_SIZES.size + size
    fh.write(b"".join(directory) + _end_records(len(members), sum(map(len, directory)), offset))


def _npz_member(name, value):
    """(name as stored, zip flags, .npy header, data as bytes) of one array, as ``np.savez`` stores it;
    None for an array numpy writes otherwise than as a header and its memory."""
    array = np.asanyarray(value)
    if not array.flags.c_contiguous or array.dtype.hasobject or not array.dtype.itemsize:
        return None
    header = np.lib.format.header_data_from_array_1_0(array)
    for write_header in (np.lib.format.write_array_header_1_0, np.lib.format.write_array_header_2_0):
        npy_header = io.BytesIO()
        with contextlib.suppress(ValueError):  # version 2.0 past 64 KiB, as numpy moves to
            write_header(npy_header, header)
            break
    else:  # names only UTF-8 holds: version 3.0, which numpy alone writes
        return None
    stored = zipfile.ZipInfo(f"{name}.npy").filename  # zipfile's rules (it ends a name at a NUL)
    flags = 0 if stored.isascii() else _ZIP_UTF8_NAME
    return stored.encode(), flags, npy_header.getvalue(), array.reshape(-1).view(np.uint8)


def _central_entry(name, flags, crc, size, offset):
    """A member's central directory entry as zipfile writes it: sizes and offset over
    ``zipfile.ZIP64_LIMIT`` move into a zip64 extra field."""
    big, far = size > zipfile.ZIP64_LIMIT, offset > zipfile.ZIP64_LIMIT
    large = [size, size] * big + [offset] * far
    extra = struct.pack(f"<HH{len(large)}Q", 1, 8 * len(large), *large) if large else b""
    return _ZIP_CENTRAL.pack(_ZIP_CENTRAL_SIGNATURE, _ZIP64_VERSION, _ZIP_UNIX, _ZIP64_VERSION, 0, flags,
                             zipfile.ZIP_STORED, _DOS_TIME, _DOS_DATE, crc, *[0xFFFFFFFF if big else size] * 2,
                             len(name), len(extra), 0, 0, 0, _ZIP_FILE_ATTRIBUTES,
                             0xFFFFFFFF if far else offset) + name + extra


def _end_records(count, size, offset):
    """The end of central directory record, after zip64's end record and locator when the
    count, the directory's size or its offset needs them (zipfile's rules)."""
    records = b""
    if count > zipfile.ZIP_FILECOUNT_LIMIT or offset > zipfile.ZIP64_LIMIT or size > zipfile.ZIP64_LIMIT:
        records = (_ZIP64_END.pack(_ZIP64_END_SIGNATURE, _ZIP64_END.size - 12, _ZIP64_VERSION, _ZIP64_VERSION,
                                   0, 0, count, count, size, offset)
                   + _ZIP64_LOCATOR.pack(_ZIP64_LOCATOR_SIGNATURE, 0, offset + size, 1))
        count, size, offset = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(offset, 0xFFFFFFFF)
    return records + _ZIP_END.pack(_ZIP_END_SIGNATURE, 0, 0, count, count, size, offset, 0)


def _write_npz_by_zipfile(fh, arrays):
    """``np.savez``'s own way, for arrays ``write_npz`` cannot write from memory."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)


def replace_dir(staging, final, *, force):
    """Move a finished ``staging`` folder to ``final``.

    Without ``force`` an existing ``final`` is an error (FileExistsError). With
    it, the old folder is first renamed aside, so at every moment ``final`` is
    either the old complete output or the new one.
    """
    final = Path(final)
    os.chmod(staging, DIR_MODE)
    check_output(final)
    if not os.path.lexists(final):  # lexists: a dangling link is there too
        os.replace(staging, final)
        return
    if not force:
        raise FileExistsError(final)
    if final.is_symlink():
        final.unlink()
        os.replace(staging, final)
        return
    old = Path(tempfile.mkdtemp(prefix=temporary_name(final.name, ".old.", reserve=8), dir=final.parent))
    try:
        os.replace(final, old / "x")
        os.replace(staging, final)
    except BaseException:  # also a signal's exception, which may land between any two lines
        if os.path.lexists(old / "x") and not os.path.lexists(final):
            os.replace(old / "x", final)  # put the old output back
        raise
    finally:
        if os.path.lexists(final):  # else old/x is the only copy of the output: kept
            shutil.rmtree(old, ignore_errors=True)


def load_npz_arrays(path, keys=None, *, max_bytes=MAX_TOTAL_BYTES):
    """Arrays from an npz file, never unpickling and never trusting declared sizes.

    The file must be a regular file. Each member's header (shape, dtype) is
    read first and checked against the bytes actually stored, and all the
    members wanted may declare at most ``max_bytes`` together, so a tiny
    member that declares 40 GB is refused before anything is allocated, and a
    member that inflates is read into its declared array piece by piece.
    ``keys`` limits what is loaded and must all be present.
    """
    path = Path(path)
    with _open_npz(path) as fh, _zip_archive(fh, path) as archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        wanted = list(members) if keys is None else list(keys)
        missing = [k for k in wanted if k not in members]
        if missing:
            raise NpzError(f"{path}: missing array(s) {missing}")
        limit = min(max_bytes, MAX_TOTAL_BYTES)
        if sum(members[k].file_size for k in wanted) > limit:
            raise NpzError(f"{path}: its arrays hold more than {limit:,} bytes in all"
                           + ("" if limit == MAX_TOTAL_BYTES else ", more than it can need"))
        return {key: _read_member(archive, members[key], path) for key in wanted}


def _open_npz(path):
    """``path`` opened for reading as an npz (a regular file, size checked); NpzError otherwise."""
    try:
        return open_regular(path, max_bytes=MAX_FILE_BYTES, what="an npz file")
    except FileNotFoundError:
        raise NpzError(f"{path}: no such file") from None
    except OSError as exc:
        raise NpzError(exc.strerror or str(exc)) from None
    except ValueError as exc:
        raise NpzError(str(exc)) from None


def _zip_archive(fh, path):
    """The zip archive in ``fh``, opened for reading; NpzError when zipfile cannot read one."""
    try:
        return zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError, EOFError) as exc:
        raise NpzError(f"{path}: not a readable npz (zip) file: {exc}") from None


def npz_keys(path):
    """The names of the arrays in the npz file ``path`` (NpzError as ``load_npz_arrays`` says)."""
    path = Path(path)
    with _open_npz(path) as fh, _zip_archive(fh, path) as archive:
        return [info.filename[:-4] for info in archive.infolist() if info.filename.endswith(".npy")]


#: The largest npz file opened: its arrays may hold MAX_TOTAL_BYTES, and zip
#: headers add a little.
MAX_FILE_BYTES = MAX_TOTAL_BYTES + 2**26


def _read_member(archive, info, path):
    label = f"{path}: array '{info.filename[:-4]}'"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise NpzError(f"{label}: compressed with zip method {info.compress_type}; numpy writes only "
                       "stored or deflated members")
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise NpzError(f"{label}: unsupported npy version {version}")
            if dtype.hasobject:
                raise NpzError(f"{label}: holds Python objects, which we never load")
            declared = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints never wrap
            if declared > MAX_ARRAY_BYTES:
                raise NpzError(f"{label}: declares {declared} bytes, over the {MAX_ARRAY_BYTES}-byte limit")
            if declared > info.file_size:
                raise NpzError(f"{label}: declares {declared} bytes but only {info.file_size} are stored")
            raw = np.empty(declared, np.uint8)
            done = 0
            while done < declared:
                piece = fh.read(min(READ_CHUNK, declared - done))
                if not piece:
                    break
                raw[done:done + len(piece)] = np.frombuffer(piece, np.uint8)
                done += len(piece)
    except NpzError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError,
            NotImplementedError, RuntimeError, MemoryError, RecursionError) as exc:
        # numpy parses the header as a Python literal; zipfile refuses features it lacks.
        raise NpzError(f"{label}: damaged: {type(exc).__name__}: {exc}"[:500]) from None
    if done != declared:
        raise NpzError(f"{label}: truncated ({done} of {declared} bytes)")
    try:
        arr = raw.view(dtype).reshape(shape, order="F" if fortran else "C")
    except (ValueError, TypeError) as exc:
        raise NpzError(f"{label}: damaged: {exc}") from None
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
