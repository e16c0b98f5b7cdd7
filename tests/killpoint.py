"""Run syncd and SIGKILL it at one exact moment of a token refresh.

    python -m tests.killpoint MOMENT [syncd arguments...]

MOMENT is one of:

- ``before_request``: the token row is locked, the refresh request is not sent yet.
- ``after_response``: the server has answered with a new pair (and so has rotated the
  refresh token); the pair is only in memory, its transaction not committed.
- ``after_commit``: the transaction that saved the new pair has committed; the new
  access token has not been used yet.

Random kills (tests/test_crash.py) almost never land inside a refresh, which lasts a
few milliseconds once per token lifetime. This launcher makes those three kills
deterministic without failpoints in production code: it patches syncd's own functions
in this process only, then hands over to syncd's CLI entry point. The kill is a real
SIGKILL of the process: no cleanup, no commit, no ``finally`` runs.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MOMENTS = ("before_request", "after_response", "after_commit")


def kill_now() -> None:
    """SIGKILL this process (flushing nothing, committing nothing)."""
    os.kill(os.getpid(), signal.SIGKILL)


def install(moment: str) -> None:
    """Patch syncd so that this process kills itself at ``moment``."""
    import syncd.auth
    from syncd.store import tokens

    # syncd.auth imported refresh_grant by name: its module global is what it calls.
    real_grant = syncd.auth.refresh_grant

    if moment == "before_request":

        def grant(*args: Any, **kwargs: Any) -> Any:
            kill_now()
            return real_grant(*args, **kwargs)

        syncd.auth.refresh_grant = grant  # type: ignore[assignment]
    elif moment == "after_response":

        def grant(*args: Any, **kwargs: Any) -> Any:
            pair = real_grant(*args, **kwargs)
            kill_now()
            return pair

        syncd.auth.refresh_grant = grant  # type: ignore[assignment]
    elif moment == "after_commit":
        # syncd.auth calls tokens.locked(...) through the module: replace it there.
        real_locked = tokens.locked

        @contextmanager
        def locked(*args: Any, **kwargs: Any) -> Iterator[tokens.TokenTransaction]:
            saved = False
            with real_locked(*args, **kwargs) as txn:
                real_save = txn.save_pair

                def save_pair(*pair_args: Any, **pair_kwargs: Any) -> None:
                    nonlocal saved
                    real_save(*pair_args, **pair_kwargs)
                    saved = True

                txn.save_pair = save_pair  # type: ignore[method-assign]
                yield txn
            # real_locked's block has ended: the pair is committed.
            if saved:
                kill_now()

        tokens.locked = locked  # type: ignore[assignment]
    else:
        raise SystemExit(f"killpoint: unknown moment {moment!r} (one of {', '.join(MOMENTS)})")


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    install(sys.argv[1])
    from syncd.cli import main as syncd_main

    syncd_main(sys.argv[2:])


if __name__ == "__main__":
    main()
