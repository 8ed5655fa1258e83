"""Age encryption of a large object in a child process, beside its upload.

pyrage encrypts holding the GIL (it never releases it), so in the process that uploads the
parts it stalls every transfer thread for as long as it works. Here it runs in a child of
its own, on another core: the child reads the dump FILE ITSELF (no plaintext through a
pipe), hashes it, encrypts it and hashes the ciphertext it writes to its stdout, a pipe the
upload reads parts from. The child reports what it hashed (one JSON line on stderr) and the
caller compares both hashes with the manifest, as the in-process path does. (Decryption
stays in the fetching process: in a child it measured slower, see bench/RESULTS.md.)

The child is `python -m backup_core.store.offsite_seal seal SRC RECIPIENT...`: public keys
on argv, nothing secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

PIPE_SIZE = 1 << 20  # fewer, larger reads and writes than the default 64 KiB pipe
READ_SIZE = 1 << 20


def seal_argv(src: Path, recipients: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "backup_core.store.offsite_seal", "seal", str(src),
            *recipients]


def widen(fd: int) -> None:
    """A 1 MiB pipe where the kernel allows it (the default is 64 KiB): fewer wake-ups."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class Child:
    """One sealing child: a context manager that kills it if the caller's work stops early
    (a store that died mid-upload), and `result` for what it proved."""

    def __init__(self, argv: list[str]) -> None:
        from backup_core.tools.runner import spawn

        self.proc = spawn(argv, what="age", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
        pipe = self.proc.stdout
        assert pipe is not None
        self.pipe: IO[bytes] = pipe
        widen(pipe.fileno())

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def reader(self) -> IO[bytes]:
        """The ciphertext, read in whole 1 MiB reads (a part is read to its full size)."""
        return io.BufferedReader(_Raw(self.pipe.fileno()), buffer_size=READ_SIZE)

    def result(self) -> dict[str, Any]:
        """Wait for the child; what it proved, or {"error": ...} in one line."""
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode(errors="replace")
        code = self.proc.wait()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        try:
            out = json.loads(lines[-1]) if lines else {}
        except ValueError:
            out = {}
        if not isinstance(out, dict) or (code != 0 and "error" not in out):
            out = {"error": (lines[-1] if lines else f"age child exited {code}")[:300]}
        return out


class _Raw(io.RawIOBase):
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        return os.readv(self.fd, [buf])


# -- the child -------------------------------------------------------------------------------


_DEPTH = 4  # 1 MiB chunks queued between age and the thread that reads (or writes)


class _In(io.RawIOBase):
    """What age reads (8 KiB at a time: pyrage's buffer), served from 1 MiB chunks that a
    thread of their own reads and hashes (hashlib and os.read release the GIL), so age's
    one thread only encrypts."""

    def __init__(self, fd: int) -> None:
        import queue
        import threading

        self.fd, self.digest, self.size = fd, hashlib.sha256(), 0
        self.chunks: queue.Queue[bytearray | BaseException] = queue.Queue(_DEPTH)
        self.view = memoryview(b"")
        self.thread = threading.Thread(target=self._fill, daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        try:
            while True:
                buf = bytearray(READ_SIZE)
                n = os.readv(self.fd, [buf])
                del buf[n:]
                self.digest.update(buf)
                self.size += n
                self.chunks.put(buf)
                if not n:
                    return
        except BaseException as exc:  # raised in age's thread, from readinto
            self.chunks.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if not self.view:
            item = self.chunks.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                self.chunks.put(item)  # the end, for any later read too
                return 0
            self.view = memoryview(item)
        n = min(len(buf), len(self.view))
        buf[:n] = self.view[:n]
        self.view = self.view[n:]
        return n


class _Out(io.RawIOBase):
    """What age writes, gathered into 1 MiB chunks that a thread of their own hashes and
    writes; `flush` at the end waits for it (and raises what it met, as `write` does)."""

    def __init__(self, fd: int) -> None:
        import queue
        import threading

        self.fd, self.digest, self.size = fd, hashlib.sha256(), 0
        self.buf = bytearray()
        self.error: OSError | None = None
        self.chunks: queue.Queue[bytearray | None] = queue.Queue(_DEPTH)
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is not None:
                continue  # keep taking, so age's thread never waits on a full queue
            try:
                view = memoryview(chunk)
                self.digest.update(view)
                self.size += len(view)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as exc:
                self.error = exc

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.error is not None:
            raise self.error
        n = len(memoryview(data))
        self.buf += data
        if len(self.buf) >= READ_SIZE:
            self.chunks.put(self.buf)
            self.buf = bytearray()
        return n

    def close(self) -> None:  # never a partial write on the way out of a failure
        if hasattr(self, "buf"):
            self.buf.clear()
        super().close()

    def flush(self) -> None:
        if not hasattr(self, "thread") or not self.thread.is_alive():
            return
        if self.buf:
            self.chunks.put(self.buf)
            self.buf = bytearray()
        self.chunks.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _report(inp: _In, out: _Out) -> None:
    """Both sides' sizes and hashes, one JSON line for the parent."""
    print(json.dumps({"plain_size": inp.size, "plain_sha256": inp.digest.hexdigest(),
                      "stored_size": out.size, "stored_sha256": out.digest.hexdigest()}),
          file=sys.stderr)


def main(argv: list[str]) -> int:
    import pyrage

    # age's thread holds the GIL; the reading and writing threads take it back within
    # half a millisecond, not the default 5
    sys.setswitchinterval(0.0005)
    try:
        if argv[:1] != ["seal"] or len(argv) < 3:
            print(json.dumps({"error": "usage: offsite_seal seal SRC RECIPIENT..."}),
                  file=sys.stderr)
            return 2
        keys = [pyrage.x25519.Recipient.from_str(k) for k in argv[2:]]
        fd = os.open(argv[1], os.O_RDONLY)
        inp, out = _In(fd), _Out(1)
        widen(1)
        pyrage.encrypt_io(inp, out, keys)
        out.flush()
        os.close(1)  # the reader sees the end before we report
        _report(inp, out)
        return 0
    except OSError as exc:
        print(json.dumps({"error": f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "),
                          "os": True}), file=sys.stderr)
        return 2
    except Exception as exc:  # one line for the parent, never a traceback
        print(json.dumps({"error": str(exc)[:300]}), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
