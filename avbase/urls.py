"""Credentials out of URLs before anything is stored, logged, tracked or exported.

One function, ``redact``, for every layer (preprocess imports nothing of ours, so pipeline and
model may import this module): the userinfo of a URL (``http://user:password@host``) and the
values of query parameters that authorise a request (pre-signed S3/GCS/Azure URLs, tokens)
become ``***``. The URL keeps its scheme, host, path and other parameters, so it still says
which store or server was meant. Text around URLs (error messages, YAML) is kept as is.
``redact_log_records`` passes every log line through it; ``refuse_credentials`` stops an
``s3://KEY:SECRET@bucket`` URL before any S3 client sees (and quotes) it.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# Query parameters whose values are credentials: AWS SigV4/V2 (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, AWSAccessKeyId, Signature), GCS (X-Goog-Signature, X-Goog-Credential),
# Azure SAS (sig), CloudFront (Signature, Policy, Key-Pair-Id), bearer-style token/key/password.
SECRET_PARAM = re.compile(
    r"signature|credential|token|secret|passw(or)?d|api[-_]?key|access[-_]?key|^sig$|^key$"
    r"|^auth$|^policy$|^key-pair-id$",
    re.I,
)
URL = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,:;!?)\]}]"
)  # not prose punctuation
USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def _redact_url(url: str) -> str:
    url = USERINFO.sub(rf"\g<1>{MASK}@", url)
    base, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_, fragment = query.partition("#")
    params = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        params.append(f"{name}={MASK}" if eq and SECRET_PARAM.search(name) else item)
    return f"{base}?{'&'.join(params)}{hash_}{fragment}"


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    ``redact("s3://AKIA:pw@bucket/x?X-Amz-Signature=ab&v=2")`` → ``"s3://***@bucket/x?X-Amz-Signature=***&v=2"``
    """
    return URL.sub(lambda m: _redact_url(m.group(0)), text)


def redact_tree(tree):
    """``redact`` applied to every string in nested dicts, lists and tuples (a config tree)."""
    if isinstance(tree, str):
        return redact(tree)
    if isinstance(tree, dict):
        return {k: redact_tree(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(redact_tree(v) for v in tree)
    return tree


class CredentialsInURL(ValueError):
    """An ``s3://`` URL carries credentials; the message names it redacted."""


def refuse_credentials(url: str) -> str:
    """``url``, unless it is an ``s3://KEY:SECRET@bucket/…`` URL: botocore would take
    ``KEY:SECRET@bucket`` for a bucket name and quote it in its errors, so such a URL is refused
    with one line naming it redacted (CredentialsInURL)."""
    if url.lower().startswith(("s3://", "s3a://")) and USERINFO.match(url):
        raise CredentialsInURL(
            f"{redact(url)}: credentials in an s3:// URL are not used; give them as "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and write "
            "s3://bucket/prefix"
        )
    return url


def redact_log_records() -> None:
    """From now on every log record's message is ``redact``-ed when it is made (the CLI layer
    calls this once, so all handlers, ranks and libraries write masked lines)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacting(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it as usual
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return record

    redacting.redacts = True
    logging.setLogRecordFactory(redacting)
