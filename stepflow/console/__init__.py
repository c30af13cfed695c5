"""The web console: ``stepflow ui MODULE:FLOW... --db URL`` (``pip install 'stepflow[ui]'``).

Pages:

* ``/runs``: runs newest first, filtered by flow, status and id prefix, counted by
  status, a keyset page at a time, refreshed in place every few seconds.
* ``/runs/RUN``: a run's diagram with its position, the timeline of its steps
  from the journal, its input, outputs, error and journal; resume and cancel.
* ``/flows``: each served flow's diagram, its runs by status, and the
  fingerprints of the definitions its stored runs were started under.

:func:`create_app` builds the ASGI application (for tests, or to mount in another
server); the ``ui`` command serves it with uvicorn. This package imports its web
stack (Starlette, Jinja2, asgi-csrf) only when an application is built, so
``import stepflow`` never needs the extra.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from stepflow.errors import ConfigurationError
from stepflow.flow import Flow
from stepflow.stores.base import Store

if TYPE_CHECKING:
    from stepflow.console._app import ASGIApp

__all__ = ["INSTALL_HINT", "create_app", "require_extra"]

#: How to install what the console needs.
INSTALL_HINT = "pip install 'stepflow[ui]'"

_MODULES = ("starlette", "jinja2", "asgi_csrf", "multipart", "uvicorn")


def require_extra() -> None:
    """Check that the console's dependencies are installed.

    Raises:
        ConfigurationError: one is missing; the message says how to install them.

    """
    import importlib.util

    missing = [name for name in _MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"the web console needs the 'ui' extra (missing: {', '.join(missing)}): {INSTALL_HINT}"
        )


def create_app(
    store: Store,
    flows: Iterable[Flow],
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> ASGIApp:
    """Build the console as an ASGI application over ``store``.

    Args:
        store: Where the runs are. The application calls it from worker threads.
        flows: The flows whose runs get diagrams, replayed timelines and a resume
            button; runs of other flows are listed and shown all the same.
        read_only: Refuse the actions (resume, cancel) with 403.
        token: When given, every request must carry it (see the security model
            in :mod:`stepflow.console._app`).
        allowed_hosts: The ``Host`` names the console answers to (``None``: any).
            ``stepflow ui`` passes the loopback names when it runs without a token.

    Raises:
        ConfigurationError: the ``ui`` extra is not installed, or two flows share
            a name.

    """
    require_extra()
    flows = list(flows)
    names = [flow.name for flow in flows]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigurationError(f"two flows named {twice[0]!r}: serve each version once")
    from stepflow.console._app import build_app

    return build_app(store, flows, read_only=read_only, token=token, allowed_hosts=allowed_hosts)
