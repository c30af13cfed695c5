"""The ``stepflow ui`` command: serve the web console with uvicorn.

Importing this module imports click only; the web stack is imported when the
command runs, so ``stepflow --help`` works without the ``ui`` extra.
"""

from __future__ import annotations

import ipaddress
import socket

import click

__all__ = ["ui"]


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


@click.command("ui")
@click.argument("flow_refs", metavar="MODULE:FLOW...", nargs=-1)
@click.option(
    "--db",
    "db",
    envvar="STEPFLOW_DB",
    metavar="URL",
    help="The store: sqlite:///path.db or postgresql://... [env STEPFLOW_DB; "
    "default sqlite:///stepflow.db]",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="The port."
)
@click.option(
    "--token",
    envvar="STEPFLOW_UI_TOKEN",
    metavar="TOKEN",
    help="Require this token on every request (needed to bind a non-loopback "
    "address) [env STEPFLOW_UI_TOKEN].",
)
@click.option("--read-only", is_flag=True, help="Show runs, but refuse resume and cancel.")
def ui(
    flow_refs: tuple[str, ...],
    db: str | None,
    host: str,
    port: int,
    token: str | None,
    read_only: bool,
) -> None:
    """Serve the web console: runs, their diagrams and timelines, resume and cancel.

    It binds 127.0.0.1 unless told otherwise; binding any other address needs
    --token (or STEPFLOW_UI_TOKEN), which every request must then carry: open
    the printed address with ?token=TOKEN once to log in. Needs the ui extra:
    pip install 'stepflow[ui]'.
    """
    from stepflow.cli import UsageProblem, _store, load_flow
    from stepflow.console import create_app, require_extra

    require_extra()
    if not token and not _is_loopback(host):
        raise UsageProblem(
            f"binding {host!r} would show your runs to other machines: pass --token "
            "TOKEN (or set STEPFLOW_UI_TOKEN), or bind 127.0.0.1"
        )
    flows = [load_flow(ref) for ref in flow_refs]
    import uvicorn

    with _store(db, create=False) as store:
        loopback = ["127.0.0.1", "localhost", "::1", "[::1]"]
        app = create_app(
            store,
            flows,
            read_only=read_only,
            token=token or None,
            allowed_hosts=None if token else loopback,
        )
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"stepflow console at http://{shown}:{port}/ (Ctrl-C to stop)")
        if token:
            click.echo("Log in once by opening it with ?token=TOKEN (the token you passed).")
        uvicorn.run(app, host=host, port=port, log_level="warning")
