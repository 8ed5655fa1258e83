"""age in a child process (`offsite_seal`): the file read by the child itself, both sides
hashed there (unsealing: the plaintext; the parent hashes what it feeds), the bytes the
same age format the in-process path reads, and a stream that does not decrypt reported as
such (not as a store or disk error)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyrage

from backup_core.store import offsite_seal, sealing


def _identity(tmp_path: Path) -> tuple[pyrage.x25519.Identity, Path]:
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "id.txt"
    path.write_text(f"# a comment line\n{identity}\n")
    return identity, path


def test_a_file_sealed_by_the_child_comes_back_through_the_child_with_both_hashes(
        tmp_path: Path) -> None:
    identity, id_file = _identity(tmp_path)
    plain = bytes(range(256)) * 12_000  # 3 MB: several pipe buffers each way
    src = tmp_path / "backup.dump"
    src.write_bytes(plain)
    with offsite_seal.Child(offsite_seal.seal_argv(src, (str(identity.to_public()),)),
                            feeding=False) as child:
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

    dest = tmp_path / "restored.dump"
    with offsite_seal.Child(offsite_seal.unseal_argv(dest, id_file), feeding=True) as child:
        for at in range(0, len(stored), 1 << 20):  # fed in parts, as a download arrives
            assert child.write(stored[at:at + (1 << 20)])
        here = child.result()
    assert dest.read_bytes() == plain
    # the ciphertext's hash is the feeding parent's to take; the size it read is reported
    assert here == {k: v for k, v in there.items() if k != "stored_sha256"}
    assert dest.stat().st_mode & 0o777 == 0o600


def test_a_stream_the_child_cannot_decrypt_says_so_in_one_line(tmp_path: Path) -> None:
    _, id_file = _identity(tmp_path)
    other = pyrage.x25519.Identity.generate()  # sealed to someone else
    stored = pyrage.encrypt(b"x" * 100_000, [other.to_public()])
    with offsite_seal.Child(offsite_seal.unseal_argv(tmp_path / "out", id_file),
                            feeding=True) as child:
        child.write(stored)
        out = child.result()
    assert out["decrypt"] is True
    assert out["error"].startswith("cannot decrypt (")
    assert out["error"].endswith("): the wrong identity, or the object was altered")
    assert "\n" not in out["error"]


def test_a_file_the_child_cannot_read_is_an_error_not_an_empty_object(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    missing = tmp_path / "gone.dump"
    with offsite_seal.Child(offsite_seal.seal_argv(missing, (str(identity.to_public()),)),
                            feeding=False) as child:
        stream = child.reader()
        assert stream.read() == b""
        stream.close()
        out = child.result()
    assert out == {"error": f"{missing}: No such file or directory", "os": True}


def test_a_chunk_altered_mid_stream_is_a_decrypt_failure_not_a_disk_error(
        tmp_path: Path) -> None:
    """age reports a chunk whose tag fails as an I/O error from inside its stream; the child
    tells it apart from its own reads and writes, so the caller says "altered", not "cannot
    write"."""
    identity, id_file = _identity(tmp_path)
    stored = bytearray(pyrage.encrypt(b"y" * 300_000, [identity.to_public()]))
    stored[200_000] ^= 1  # inside the fourth 64 KiB chunk
    with offsite_seal.Child(offsite_seal.unseal_argv(tmp_path / "out", id_file),
                            feeding=True) as child:
        child.write(bytes(stored))
        out = child.result()
    assert out["decrypt"] is True
    assert out["error"].startswith("cannot decrypt (")
    assert out["error"].endswith("): the wrong identity, or the object was altered")


def test_in_process_too_a_chunk_altered_mid_stream_is_a_decrypt_failure(
        tmp_path: Path) -> None:
    """The same for a small object, decrypted in this process (`sealing.unseal_to`): a
    failed verification, not a disk or store error; a writer that fails is its own error."""
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
