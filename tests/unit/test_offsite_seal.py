"""age in a child process (`offsite_seal`, a push's encryption): the file read by the child
itself, both sides hashed there, the bytes the same age format the in-process path reads;
and in-process, a stream that does not decrypt reported as such (not as a store or disk
error)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyrage

from backup_core.store import offsite_seal, sealing


def test_a_file_sealed_by_the_child_comes_back_with_both_hashes(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    plain = bytes(range(256)) * 12_000  # 3 MB: several pipe buffers each way
    src = tmp_path / "backup.dump"
    src.write_bytes(plain)
    with offsite_seal.Child(offsite_seal.seal_argv(src, (str(identity.to_public()),))) as child:
        stream = child.reader()
        stored = stream.read()
        stream.close()
        there = child.result()
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert there == {"plain_size": len(plain), "plain_sha256": hashlib.sha256(plain).hexdigest(),
                     "stored_size": len(stored),
                     "stored_sha256": hashlib.sha256(stored).hexdigest()}
    # the in-process reader opens what the child sealed
    back = io.BytesIO()
    sealing.unseal_to(io.BytesIO(stored), back, ids=[identity], what="k.dump.age")
    assert back.getvalue() == plain


def test_a_file_the_child_cannot_read_is_an_error_not_an_empty_object(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    missing = tmp_path / "gone.dump"
    with offsite_seal.Child(offsite_seal.seal_argv(missing, (str(identity.to_public()),))) as child:
        stream = child.reader()
        assert stream.read() == b""
        stream.close()
        out = child.result()
    assert out == {"error": f"{missing}: No such file or directory", "os": True}


def test_a_chunk_altered_mid_stream_is_a_decrypt_failure_not_a_disk_error(
        tmp_path: Path) -> None:
    """age reports a chunk whose tag fails as an I/O error from inside its stream; it is a
    failed verification ("altered"), not a disk or store error; a writer that fails is its
    own error."""
    import pytest

    from backup_core.tools.errors import VerifyFailed

    identity = pyrage.x25519.Identity.generate()
    stored = bytearray(pyrage.encrypt(b"y" * 300_000, [identity.to_public()]))
    stored[200_000] ^= 1
    with pytest.raises(VerifyFailed) as raised:
        sealing.unseal_to(io.BytesIO(bytes(stored)), io.BytesIO(), ids=[identity], what="k")
    assert str(raised.value) == ("k: cannot decrypt (decryption error): the wrong identity, "
                                 "or the object was altered")

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    good = pyrage.encrypt(b"y" * 300_000, [identity.to_public()])
    with pytest.raises(OSError, match="No space left on device"):
        sealing.unseal_to(io.BytesIO(good), Full(), ids=[identity], what="k")
