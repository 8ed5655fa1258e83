"""age in one streaming pass: both sides hashed as they go, and a stream that does not
decrypt is one clear line."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pyrage
import pytest

from backup_core.store import sealing
from backup_core.store.age_format import Identity
from backup_core.tools.errors import ConfigError, VerifyFailed


def test_a_file_sealed_and_unsealed_comes_back_with_both_hashes(
        tmp_path: Path) -> None:
    """Sealed by our threads, the bytes are an age file pyrage opens; unsealed, both sides'
    hashes are the ones the sealing saw."""
    identity = Identity.generate()
    plain = bytes(range(256)) * 40_000 + b"!"  # 10 MB: more than one block each way
    src = tmp_path / "backup.dump"
    src.write_bytes(plain)
    sealed = io.BytesIO()
    there = sealing.seal_to(src, sealed, (str(identity.to_public()),))
    stored = sealed.getvalue()
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert (there.plain_size, there.plain_sha256) == (len(plain),
                                                      hashlib.sha256(plain).hexdigest())
    assert (there.stored_size, there.stored_sha256) == (len(stored),
                                                        hashlib.sha256(stored).hexdigest())
    assert pyrage.decrypt(stored, [pyrage.x25519.Identity.from_str(str(identity))]) == plain
    back = io.BytesIO()
    here = sealing.unseal_to(io.BytesIO(stored), back, ids=[identity], what="k.dump.age")
    assert back.getvalue() == plain
    assert here == there


@pytest.mark.parametrize("size", [0, 8 << 20, (16 << 20) + 3])
def test_the_upload_reads_exact_parts_of_the_whole_ciphertext(tmp_path: Path,
                                                               size: int) -> None:
    """What an upload reads (`read(n)`, as boto3 reads its parts) is the whole age file, in
    parts of exactly n bytes but the last, at the block boundaries too."""
    identity = Identity.generate()
    plain = hashlib.sha256(b"x").digest() * (size // 32) + b"y" * (size % 32)
    src = tmp_path / "backup.dump"
    src.write_bytes(plain)
    parts = []
    with sealing.SealedStream(src, (str(identity.to_public()),)) as stream:
        while part := stream.read(5 << 20):
            parts.append(part)
        hashed = stream.hashed()
    assert [len(p) for p in parts[:-1]] == [5 << 20] * (len(parts) - 1)
    stored = b"".join(parts)
    assert (hashed.stored_size, hashed.stored_sha256) == (len(stored),
                                                          hashlib.sha256(stored).hexdigest())
    assert hashed.plain_sha256 == hashlib.sha256(plain).hexdigest()
    assert pyrage.decrypt(stored, [pyrage.x25519.Identity.from_str(str(identity))]) == plain


@pytest.mark.parametrize("size", [0, 3 * 65536, (1 << 20) + 3])
def test_the_parts_of_a_multipart_upload_are_the_whole_age_file_in_reused_buffers(
        tmp_path: Path, size: int) -> None:
    """Iterated (as `Repository.upload_parts` sends them), the parts are exactly `part`
    bytes but the last, chunks straddling two parts included; the buffers given back are
    filled again, never while a part is still held; together they are the age file."""
    identity = Identity.generate()
    plain = (hashlib.sha256(b"p").digest() * (size // 32 + 1))[:size]
    src = tmp_path / "backup.dump"
    src.write_bytes(plain)
    copies, seen = [], set()
    with sealing.SealedStream(src, (str(identity.to_public()),), part=100_000) as stream:
        for part in stream:
            copies.append(bytes(part))
            seen.add(id(part))
            stream.recycle(part)
        hashed = stream.hashed()
    stored = b"".join(copies)
    assert [len(c) for c in copies[:-1]] == [100_000] * (len(copies) - 1)
    assert 0 < len(copies[-1]) <= 100_000
    if len(copies) > 3:  # the sealing thread fills the buffers given back
        assert len(seen) < len(copies)
    assert (hashed.stored_size, hashed.stored_sha256) == (len(stored),
                                                          hashlib.sha256(stored).hexdigest())
    assert (hashed.plain_size, hashed.plain_sha256) == (size,
                                                        hashlib.sha256(plain).hexdigest())
    assert pyrage.decrypt(stored, [pyrage.x25519.Identity.from_str(str(identity))]) == plain


def test_a_dump_that_cannot_be_read_fails_the_stream_never_ends_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read error mid-file (or a file that cannot be opened) is raised from `read`, and
    again from every later `read` (the upload is abandoned), never an early end that would
    complete a short object; leaving early stops the thread."""
    identity = Identity.generate()
    src = tmp_path / "dir.dump"
    src.mkdir()
    with sealing.SealedStream(src, (str(identity.to_public()),)) as stream:
        with pytest.raises(IsADirectoryError):
            stream.read(1 << 20)
        assert isinstance(stream.failed, IsADirectoryError)
    whole = tmp_path / "whole.dump"
    whole.write_bytes(b"y" * (3 * sealing.BLOCK))
    real, calls = sealing._read_into, []

    def failing(fh: io.FileIO, buf: bytearray) -> int:
        calls.append(len(buf))
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(fh, buf)

    monkeypatch.setattr(sealing, "_read_into", failing)
    with sealing.SealedStream(whole, (str(identity.to_public()),)) as stream:
        with pytest.raises(OSError) as first:
            while stream.read(1 << 20):
                pass
        assert first.value is stream.failed and first.value.errno == 5
        with pytest.raises(OSError) as again:  # never a clean end after the failure
            stream.read(1 << 20)
        assert again.value is first.value
    monkeypatch.setattr(sealing, "_read_into", real)
    big = tmp_path / "big.dump"
    big.write_bytes(b"z" * (40 << 20))
    with sealing.SealedStream(big, (str(identity.to_public()),)) as stream:
        assert len(stream.read(1 << 20)) == 1 << 20  # then left with most unread


def test_a_stream_that_does_not_decrypt_is_one_line() -> None:
    identity = Identity.generate()
    with pytest.raises(VerifyFailed) as raised:
        sealing.unseal_to(io.BytesIO(b"age-encryption.org/v1\n-> X25519 garbage\n---"),
                          io.BytesIO(), ids=[identity], what="k.dump.age")
    message = str(raised.value)
    assert message == ("k.dump.age: cannot decrypt (the file ends inside the age header): "
                       "the wrong identity, or the object was altered")


def test_a_chunk_altered_mid_stream_is_a_decrypt_failure_not_a_disk_error() -> None:
    """A chunk whose tag fails is a failed verification ("altered"), not a disk or store
    error; a writer that fails is its own error."""
    identity = Identity.generate()
    good = pyrage.encrypt(b"y" * 300_000,
                          [pyrage.x25519.Recipient.from_str(str(identity.to_public()))])
    stored = bytearray(good)
    stored[200_000] ^= 1
    with pytest.raises(VerifyFailed) as raised:
        sealing.unseal_to(io.BytesIO(bytes(stored)), io.BytesIO(), ids=[identity], what="k")
    assert str(raised.value) == ("k: cannot decrypt (a chunk failed authentication: the "
                                 "payload was altered): the wrong identity, or the object "
                                 "was altered")

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        sealing.unseal_to(io.BytesIO(good), Full(), ids=[identity], what="k")


RESTORE = ["db", "restore", "backup.dump", "--target-url", "postgresql://u@127.0.0.1:9/copy"]


@pytest.mark.parametrize("command", [RESTORE, ["drill", "run"]])
def test_a_signer_without_a_repository_is_refused_not_ignored(command: list[str],
                                                              tmp_path: Path) -> None:
    """`--repo-signer` on the command line with no --repo would check nothing: exit 2, one
    line, before anything starts; from ATB_REPO_SIGNER (host-wide) it only waits for --repo."""
    from tests.helpers import atb_inproc

    key = tmp_path / "signer.pem"
    done = atb_inproc(*command, "--repo-signer", str(key), env={"HOME": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr == ("atb: error: --repo-signer checks backups fetched with --repo, and "
                           "there is no --repo here: nothing would be checked\n")
    if command == RESTORE:  # goes on to what it was asked (here: a file that is not there)
        quiet = atb_inproc(*command, env={"HOME": str(tmp_path),
                                          "ATB_REPO_SIGNER": str(key)})
        assert (quiet.returncode, quiet.stderr) == (2, "atb: error: no backup at backup.dump: "
                                                       "give the path of a .dump file (`atb db "
                                                       "list`)\n")


def test_overlapping_handoffs_put_the_process_interval_back_once_the_last_ends() -> None:
    before = sys.getswitchinterval()
    first, second = sealing.quick_handoff(), sealing.quick_handoff()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # ended out of order: the other still runs
    assert sys.getswitchinterval() == sealing.SWITCH_INTERVAL
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == before


def test_a_recipient_of_low_order_is_one_line_before_work_starts() -> None:
    from backup_core.store import age_format

    low = age_format.bech32_encode("age", bytes(32))
    with pytest.raises(ConfigError) as raised:
        sealing.recipients(f"{Identity.generate().to_public()}, {low}")
    assert str(raised.value) == f"BACKUP_ENCRYPT_TO: {low[:12]}… is not an age public key (age1…)"
