"""Install or update the dashboards in a Grafana, through its HTTP API (grafana-client).

Idempotent: the dashboards carry fixed uids and are written with overwrite, into a
folder found by title (created once). Every failure becomes a PushError whose message
says what is wrong and what to do.
"""

from __future__ import annotations

from typing import Any

from mrcdiag.grafana.dashboards import all_dashboards


class PushError(Exception):
    """One line for the user."""


def push(url: str, token: str | None, folder: str = "mrcdiag", timeout: float = 10.0) -> list[str]:
    """Push every dashboard; returns the titles written."""
    import niquests
    from grafana_client import GrafanaApi
    from grafana_client.client import (
        GrafanaClientError,
        GrafanaServerError,
        GrafanaTimeoutError,
        GrafanaUnauthorizedError,
    )

    if not url.startswith(("http://", "https://")):
        raise PushError(f"{url!r} is not an http(s) URL; pass it as --url http://grafana:3000")
    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
    try:
        api.health.check()
        folder_uid = _folder_uid(api, folder)
        written = []
        for dashboard in all_dashboards().values():
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**dashboard, "id": None},
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "mrcdiag dashboards push",
                }
            )
            written.append(dashboard["title"])
        return written
    except GrafanaUnauthorizedError:
        raise PushError(
            f"Grafana at {url} refused the credentials (401): pass a service-account token "
            "with Editor rights as --token"
        ) from None
    except GrafanaTimeoutError:
        raise PushError(f"Grafana at {url} did not answer within {timeout:g} s") from None
    except GrafanaServerError as exc:
        raise PushError(f"Grafana at {url} failed ({_status(exc)}); try again later") from None
    except GrafanaClientError as exc:
        raise PushError(
            f"Grafana at {url} rejected the request ({_status(exc)}); is this the Grafana "
            "base URL, and may the token write dashboards?"
        ) from None
    except niquests.exceptions.RequestException as exc:
        raise PushError(
            f"cannot reach Grafana at {url} ({type(exc).__name__}); is it running and is the "
            "URL right?"
        ) from None


def _status(exc: Any) -> str:
    code = getattr(exc, "status_code", None)
    return f"HTTP {code}" if code else str(exc).splitlines()[0][:120]


def _folder_uid(api: Any, title: str) -> str:
    for folder in api.folder.get_all_folders() or []:
        if folder.get("title") == title:
            return folder["uid"]
    return api.folder.create_folder(title)["uid"]
