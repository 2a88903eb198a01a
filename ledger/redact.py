"""Credentials out of every text the project prints: DSNs, catalog URLs, RPC URLs.

One helper for every message, log line, exception and printed statement. A PostgreSQL catalog's
password (`password=...` in a libpq key=value DSN, or the user info of a `postgresql://` URL) and a
hosted node's API key (in the user info, a query parameter, or a path segment such as Infura's
`/v3/<key>`) become `***`. Pattern redaction covers texts a library wrote (a DuckDB or libpq error
that quotes the connection string); `remember_secret` covers a value that no pattern recognises:
every registered secret is replaced wherever it appears.
"""

import re
import threading
from urllib.parse import urlsplit, urlunsplit

mask = "***"
# A path segment this long made only of key characters is an API key (Infura, Alchemy and QuickNode
# issue 32-40 character keys), not a route name like `v3` or `rpc`.
key_segment_chars_min = 20
# Registered secrets shorter than this are not replaced anywhere they appear: a short password is often a
# word ("royalty") that would blank out the commands' own advice. The patterns still mask it in every DSN
# and URL form; only a short secret quoted outside those forms stays visible.
secret_chars_min = 8

# libpq key=value: `password=x`, `password = 'x y'`, also `sslpassword`.
_keyword_value = re.compile(r"(?i)(?<![?&])\b((?:ssl)?password)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)")
# A URL's user info: `scheme://user:secret@host`.
_userinfo = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@'\"]*):([^@\s/'\"]*)@")
# Query parameters that carry credentials: `?apikey=...&token=...`.
_query_secret = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|secret|password|auth)=)([^&\s'\"#]+)")
# Key-like path segments of http(s)/ws(s) URLs.
_url = re.compile(r"(?i)\b(?:https?|wss?)://[^\s'\"<>]+")
_key_segment = re.compile(rf"^[A-Za-z0-9_\-]{{{key_segment_chars_min},}}$")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def remember_secret(secret: str | None) -> None:
    """Replace `secret` by `***` in every later `redact` of this process (e.g. a configured RPC URL's path)."""
    if secret and len(secret) >= secret_chars_min:
        with _secrets_lock:
            _secrets.add(secret)


def redact(text: object) -> str:
    """`text` with every credential it quotes replaced by `***`."""
    result = str(text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        result = result.replace(secret, mask)
    result = _keyword_value.sub(lambda m: f"{m.group(1)}{m.group(2)}{mask}", result)
    result = _userinfo.sub(lambda m: f"{m.group(1)}:{mask}@", result)
    result = _query_secret.sub(lambda m: f"{m.group(1)}{mask}", result)
    return _url.sub(lambda m: _mask_key_segments(m.group(0)), result)


def redact_url(url: str) -> str:
    """An RPC or catalog URL fit to print: scheme, host and port; no password, key-like path or query secret.

    Its password, key-like path segments and query secrets are also remembered (`remember_secret`), so the
    same key is masked wherever a library quotes it, whatever the shape of the quote.
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return redact(url)
    if parts.password:
        remember_secret(parts.password)
    segments = [segment for segment in parts.path.split("/") if segment]
    for segment in segments:
        if _key_segment.match(segment):
            remember_secret(segment)
    for _, value in _query_pairs(parts.query):
        remember_secret(value)
    return redact(url)


def without_password(dsn: str) -> str:
    """A libpq DSN (key=value or URL) with its password removed, for a client that finds it in a passfile."""
    text = _keyword_value.sub("", dsn)
    text = _userinfo.sub(lambda m: f"{m.group(1)}@", text)
    text = re.sub(r"(?i)([?&])password=[^&\s]*&?", r"\1", text).rstrip("?&")
    return " ".join(text.split()) if "://" not in text else text


def dsn_password(dsn: str) -> str | None:
    """The password a libpq DSN (key=value or URL) carries, or None."""
    match = _keyword_value.search(dsn)
    if match:
        value = match.group(3)
        if value.startswith("'"):
            return re.sub(r"\\(.)", r"\1", value[1:-1])
        return value
    url = dsn.removeprefix("postgres:")
    if "://" in url:
        parts = urlsplit(url)
        if parts.password:
            return parts.password
        for name, value in _query_pairs(parts.query):
            if name.lower() == "password":
                return value
    return None


def _mask_key_segments(url: str) -> str:
    parts = urlsplit(url)
    segments = parts.path.split("/")
    if not any(_key_segment.match(segment) for segment in segments):
        return url
    masked = "/".join(mask if _key_segment.match(segment) else segment for segment in segments)
    return urlunsplit((parts.scheme, parts.netloc, masked, parts.query, parts.fragment))


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name and value and _query_secret.match(f"?{name}={value}"):
            pairs.append((name, value))
    return pairs
