"""What the user sees while an S3 endpoint does not answer, and when it refuses.

botocore retries a call that timed out (``standard`` mode, backoff) before it gives up, so a
stalled endpoint (it accepts the connection and never answers) is silent for up to a minute:
:func:`waiting_for` logs one warning line, naming the endpoint and the retry policy, as soon as a
call has waited ``WARN_AFTER_S``; the retries themselves are unchanged. :func:`s3_call` adds the
one-line error for an endpoint that cannot be reached at all (connection refused, no route),
which botocore raises as neither OSError nor ValueError.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from avbase.errors import AvfusionError

log = logging.getLogger("avfusion.s3")

WARN_AFTER_S = 3.0  # a call still waiting for the endpoint after this long is reported
_watching = threading.local()  # one warning per outermost call (calls nest: remove → exists)


def endpoint() -> str:
    """The S3 endpoint the clients talk to (for messages)."""
    return os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"


@contextmanager
def waiting_for(what: str, policy: str) -> Iterator[None]:
    """Run the body; if it is still waiting after ``WARN_AFTER_S`` seconds, log one line:
    ``what: no answer from the S3 endpoint … yet; still trying (policy)``."""
    if getattr(_watching, "active", False):
        yield
        return
    timer = threading.Timer(
        WARN_AFTER_S,
        log.warning,
        ("%s: no answer from the S3 endpoint %s yet; still trying (%s)", what, endpoint(), policy),
    )
    timer.daemon = True
    _watching.active = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        _watching.active = False


@contextmanager
def s3_call(what: str, policy: str) -> Iterator[None]:
    """:func:`waiting_for`, and an unreachable endpoint as one AvfusionError naming it."""
    from botocore.exceptions import ConnectionError as EndpointUnreachable

    with waiting_for(what, policy):
        try:
            yield
        except EndpointUnreachable as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AvfusionError(
                f"{what}: cannot reach the S3 endpoint {endpoint()} ({reason}); check "
                "AWS_ENDPOINT_URL and that the server is up"
            ) from None
