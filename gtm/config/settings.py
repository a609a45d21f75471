"""Settings from the environment (``GTM_*``) with command-line flags taking precedence."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """Process-wide settings.

    Attributes:
        redis_url: ``redis://`` / ``rediss://`` URL (may carry ``user:password@``), or
            ``embedded://`` for the in-process store. Env: ``GTM_REDIS_URL``.
        redis_password_file: a file whose content is the Redis password, used when the URL
            carries none (keeps the secret out of process listings). Env:
            ``GTM_REDIS_PASSWORD_FILE``.
        namespace: installation namespace (Redis hash tag). Env: ``GTM_NAMESPACE``.
        policies: policy file or directory. Env: ``GTM_POLICIES``.
        regions: region inventory directory. Env: ``GTM_REGIONS``.
    """

    model_config = SettingsConfigDict(env_prefix="GTM_", extra="ignore")

    redis_url: str = DEFAULT_REDIS_URL
    redis_password_file: str | None = None
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    policies: str = "policies"
    regions: str = "regions"

    def resolved_redis_url(self, override: str | None = None) -> str:
        """The Redis URL to use, with the password from ``redis_password_file`` if set."""
        url = override or self.redis_url
        if self.redis_password_file and "@" not in url and url.startswith(("redis://", "rediss://")):
            with open(self.redis_password_file, encoding="utf-8") as fh:
                secret = fh.read().strip()
            scheme, rest = url.split("://", 1)
            from urllib.parse import quote

            url = f"{scheme}://:{quote(secret, safe='')}@{rest}"
        return url


def redact(url: str) -> str:
    """``url`` with any password (``user:PASS@`` or ``?password=``) replaced by ``***``."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc and not parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() in {"password", "pass", "passwd", "auth"} else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
