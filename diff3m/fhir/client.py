"""FHIR R4 REST client (httpx): timeouts, retries with backoff, paging, R4B models, typed errors."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from fhir.resources.R4B import FHIRAbstractModel, get_fhir_model_class
from pydantic import ValidationError

from diff3m.config import FhirSettings
from diff3m.fhir.auth import Auth, NoAuth, auth_for
from diff3m.fhir.errors import (
    FhirAuthError,
    FhirError,
    FhirHttpError,
    FhirInvalidResponse,
    FhirRetryableError,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
Resource = FHIRAbstractModel


def parse_resource(data: Any, expected: str | None = None) -> Resource:
    """A JSON object as an R4B model; FhirInvalidResponse (with the reason) when it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise FhirInvalidResponse("response is not a FHIR resource (no resourceType)")
    rtype = data["resourceType"]
    if expected and rtype != expected:
        raise FhirInvalidResponse(f"expected a {expected}, got a {rtype}")
    try:
        cls = get_fhir_model_class(rtype)
    except (KeyError, ValueError, AttributeError, ImportError):
        raise FhirInvalidResponse(f"unknown resourceType {rtype!r}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FhirInvalidResponse(f"invalid {rtype}: {where}: {first['msg']}") from None


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _outcome_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
                 for i in body.get("issue", []) if isinstance(i, dict)]
        return "; ".join(t for t in texts if t)[:300]
    return ""


@dataclass(frozen=True)
class CreateResult:
    """A (conditional) create: the resource as stored and whether this call created it."""

    resource: Resource
    created: bool

    @property
    def id(self) -> str:
        """The server-assigned logical id."""
        return str(self.resource.id)  # type: ignore[attr-defined]


class FhirClient:
    """A small synchronous FHIR R4 client; every failure is a FhirError subclass."""

    def __init__(self, base_url: str, auth: Auth | None = None, timeout: float = 10.0, max_retries: int = 3,
                 backoff: float = 0.5, backoff_max: float = 30.0, max_pages: int = 100,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not base_url:
            raise FhirError("fhir.base_url is not configured")
        self.base_url = base_url.rstrip("/")
        self.auth = auth or NoAuth()
        self.max_retries, self.backoff, self.backoff_max = max_retries, backoff, backoff_max
        self.max_pages = max_pages
        self._sleep = sleep
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport,
                                  headers={"Accept": FHIR_JSON}, follow_redirects=False)
        self.requests = 0

    @classmethod
    def from_settings(cls, fhir: FhirSettings, **kwargs: Any) -> FhirClient:
        """A client configured from the ``[fhir]`` settings section."""
        return cls(fhir.base_url, auth_for(fhir), timeout=fhir.timeout_seconds,
                   max_retries=fhir.max_retries, **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            if urlsplit(path_or_url).netloc != urlsplit(self.base_url).netloc:
                raise FhirInvalidResponse("server pointed to another host; not following it")
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        hinted = retry_after_seconds(resp.headers.get("Retry-After")) if resp is not None else None
        if hinted is not None:
            return min(hinted, self.backoff_max)
        base = min(self.backoff * (2 ** attempt), self.backoff_max)
        return base * (0.5 + random.random() / 2)  # jitter

    def request(self, method: str, path_or_url: str, *, params: dict[str, Any] | None = None,
                body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """Send one request with retries on network errors, 429 and 5xx; return a 2xx response."""
        url = self._url(path_or_url)
        content = json.dumps(body).encode() if body is not None else None
        hdrs = dict(headers or {})
        if content is not None:
            hdrs["Content-Type"] = FHIR_JSON
        reauthed = False
        attempt = 0
        while True:
            resp: httpx.Response | None = None
            try:
                req_headers = {**hdrs, **self.auth.headers()}
                self.requests += 1
                resp = self._http.request(method, url, params=params, content=content, headers=req_headers)
            except httpx.TimeoutException:
                failure = f"{method} {urlsplit(url).path}: timed out"
            except httpx.HTTPError as err:
                failure = f"{method} {urlsplit(url).path}: {type(err).__name__}"
            else:
                if resp.status_code == 401 and not reauthed and not isinstance(self.auth, NoAuth):
                    self.auth.invalidate()
                    reauthed = True
                    continue
                if resp.status_code < 400:
                    return resp
                if resp.status_code in (401, 403):
                    raise FhirAuthError(f"{method} {urlsplit(url).path}: {resp.status_code} "
                                        f"{_outcome_text(resp)}".rstrip(), resp.status_code)
                if resp.status_code not in RETRY_STATUSES:
                    raise FhirHttpError(f"{method} {urlsplit(url).path}: {resp.status_code} "
                                        f"{_outcome_text(resp)}".rstrip(), resp.status_code)
                failure = f"{method} {urlsplit(url).path}: {resp.status_code}"
            if attempt >= self.max_retries:
                status = resp.status_code if resp is not None else None
                raise FhirRetryableError(f"{failure} (after {attempt + 1} attempts)", status)
            delay = self._delay(attempt, resp)
            log.info("fhir retry %d/%d in %.2fs: %s", attempt + 1, self.max_retries, delay, failure)
            self._sleep(delay)
            attempt += 1

    def _json(self, resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            ctype = resp.headers.get("content-type", "no content type")
            raise FhirInvalidResponse(f"{resp.request.method} {resp.request.url.path}: response is not "
                                      f"JSON ({ctype})") from None

    # --- interactions --------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> Resource:
        """GET [type]/[id] as an R4B model."""
        resp = self.request("GET", f"{resource_type}/{resource_id}")
        return parse_resource(self._json(resp), resource_type)

    def pages(self, resource_type: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """The raw searchset Bundles of a search, following link[next]."""
        url: str | None = resource_type
        query: dict[str, Any] | None = dict(params or {})
        for _ in range(self.max_pages):
            if url is None:
                return
            data = self._json(self.request("GET", url, params=query))
            if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
                raise FhirInvalidResponse(f"search {resource_type}: response is not a Bundle")
            yield data
            links = data.get("link") or []
            nxt = [lk.get("url") for lk in links if isinstance(lk, dict) and lk.get("relation") == "next"]
            url, query = (str(nxt[0]), None) if nxt and nxt[0] else (None, None)
        if url is not None:
            raise FhirInvalidResponse(f"search {resource_type}: more than {self.max_pages} pages")

    def search(self, resource_type: str, params: dict[str, Any] | None = None) -> list[Resource]:
        """All matching resources of ``resource_type`` (search mode 'match'), over every page."""
        out: list[Resource] = []
        for bundle in self.pages(resource_type, params):
            for entry in bundle.get("entry") or []:
                if not isinstance(entry, dict):
                    raise FhirInvalidResponse(f"search {resource_type}: malformed Bundle entry")
                if (entry.get("search") or {}).get("mode", "match") != "match":
                    continue
                res = entry.get("resource")
                if isinstance(res, dict) and res.get("resourceType") != resource_type:
                    continue  # OperationOutcome or _include'd resources
                out.append(parse_resource(res, resource_type))
        return out

    def create(self, resource: Resource, if_none_exist: str | None = None) -> CreateResult:
        """POST a resource, conditionally (If-None-Exist: a search query) when given."""
        rtype = resource.get_resource_type()
        headers = {"Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        body = json.loads(resource.model_dump_json(exclude_none=True))
        resp = self.request("POST", rtype, body=body, headers=headers)
        created = resp.status_code == 201
        if resp.content:
            return CreateResult(parse_resource(self._json(resp), rtype), created)
        location = resp.headers.get("Location", "")
        parts = urlsplit(location).path.split("/")
        if rtype not in parts or parts.index(rtype) + 1 >= len(parts):
            raise FhirInvalidResponse(f"create {rtype}: no body and no usable Location header")
        return CreateResult(self.read(rtype, parts[parts.index(rtype) + 1]), created)

    def update(self, resource: Resource, if_match: str | None = None) -> Resource:
        """PUT a resource (with If-Match: W/"version" for optimistic locking when given)."""
        rtype = resource.get_resource_type()
        rid = getattr(resource, "id", None)
        if not rid:
            raise FhirError(f"update {rtype}: resource has no id")
        headers = {"Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = if_match
        body = json.loads(resource.model_dump_json(exclude_none=True))
        resp = self.request("PUT", f"{rtype}/{rid}", body=body, headers=headers)
        return parse_resource(self._json(resp), rtype) if resp.content else self.read(rtype, str(rid))
