"""A small asynchronous Kubernetes API client for the operator's own requests.

kopf watches and patches the MLTrainingJobs; this client creates, reads,
patches and deletes the children, and writes the status.  It reuses the
credentials from kopf's login (:class:`kopf.ConnectionInfo`), so both talk to the
same server as the same user, and it raises :class:`ApiError`, whose
``temporary`` flag marks the errors that a retry can fix.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, Mapping

import aiohttp
import kopf

# Statuses worth a retry: throttling, server errors and gateway timeouts.
# 401 is included because kopf logs in again when a token expires.
TEMPORARY_STATUSES = frozenset({401, 408, 429, 500, 502, 503, 504})

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A failed API request; ``status`` is None when no response arrived (timeout, refused connection)."""

    def __init__(self, method: str, path: str, status: int | None, message: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        code = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{method} {path} failed with {code}: {message}")

    @property
    def temporary(self) -> bool:
        return self.status is None or self.status in TEMPORARY_STATUSES

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    """Build the URL path of a collection or an object, e.g. ``/apis/batch/v1/namespaces/ns/jobs/name``."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [prefix]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


# Plural names of the kinds the operator creates.
PLURALS = {"ConfigMap": "configmaps", "Service": "services", "Job": "jobs", "Pod": "pods", "PodGroup": "podgroups"}


def object_path(document: Mapping[str, Any], *, collection: bool = False) -> str:
    metadata = document["metadata"]
    return resource_path(
        document["apiVersion"], PLURALS[document["kind"]], metadata.get("namespace"),
        None if collection else metadata["name"],
    )


class KubeApi:
    """JSON requests to one API server; one aiohttp session per event loop."""

    def __init__(self, timeout_seconds: float = 30.0) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True

    def configure(self, info: kopf.ConnectionInfo) -> None:
        """Use new credentials (kopf calls the login handler again when the old ones expire)."""
        self._info = info
        self._ssl = _ssl_context(info)
        if self._session is not None and not self._session.closed:
            asyncio.get_running_loop().create_task(self._session.close())
        self._session = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
    ) -> Any:
        session, headers = self._connection()
        url = self._info.server.rstrip("/") + path  # keeps a path prefix of the server URL, if any
        if body is not None:
            headers["Content-Type"] = content_type
        data = json.dumps(body) if body is not None else None
        try:
            async with session.request(method, url, data=data, headers=headers, ssl=self._ssl) as response:
                text = await response.text()
                if response.status >= 400:
                    raise ApiError(method, path, response.status, _error_message(text))
                return json.loads(text) if text else None
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
            raise ApiError(method, path, None, str(error) or type(error).__name__) from error

    def _connection(self) -> tuple[aiohttp.ClientSession, dict[str, str]]:
        if self._info is None:
            raise RuntimeError("the API client has no credentials yet: the login handler has not run")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Accept": "application/json", **self._info.as_http_headers()}
        return self._session, headers

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def create(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", object_path(document, collection=True), body=document)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def delete(self, path: str, *, propagation: str | None = None) -> bool:
        """Delete an object; return False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation} if propagation else None
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return True  # aiohttp's default; unused for plain http
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data,
    )
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if info.certificate_path:
        # NOTE: inline certificate data (certificate_data) is not supported; kopf's
        # client-library login always hands over file paths.
        context.load_cert_chain(str(info.certificate_path), str(info.private_key_path) if info.private_key_path else None)
    return context


def _error_message(text: str) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("reason") or payload)[:500]
    return str(payload)[:500]
