"""age in one streaming pass: both sides hashed as they go, and a stream that does not
decrypt is one clear line."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyrage
import pytest

from backup_core.store import sealing
from backup_core.tools.errors import VerifyFailed


def test_a_file_sealed_and_unsealed_comes_back_with_both_hashes(
        tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    plain = bytes(range(256)) * 40_000  # 10 MB: more than one chunk each way
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
    back = io.BytesIO()
    here = sealing.unseal_to(io.BytesIO(stored), back, ids=[identity], what="k.dump.age")
    assert back.getvalue() == plain
    assert here == there


def test_a_stream_that_does_not_decrypt_is_one_line() -> None:
    identity = pyrage.x25519.Identity.generate()
    with pytest.raises(VerifyFailed) as raised:
        sealing.unseal_to(io.BytesIO(b"age-encryption.org/v1\n-> X25519 garbage\n---"),
                          io.BytesIO(), ids=[identity], what="k.dump.age")
    message = str(raised.value)
    assert message.startswith("k.dump.age: cannot decrypt (") and "\n" not in message
    assert message.endswith("): the wrong identity, or the object was altered")


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
