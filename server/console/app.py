"""The console's Litestar app: login, the session and CSRF checks, pages, errors.

Every page is rendered on the server from the Jinja2 templates in ``templates/``; the only
script is the vendored ``static/console.js``. See docs/console.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from hub.errors import HubError
from server.console.security import SESSION_SECONDS, SecurityHeaders, Session, same
from server.console.state import ConsoleState

log = logging.getLogger("qlora_hub.console")
HERE = Path(__file__).parent
NAV = (
    ("/adapters", "Adapters"),
    ("/push", "Push"),
    ("/audit", "Audit log"),
    ("/runs", "Training runs"),
    ("/rounds", "Federated rounds"),
    ("/playground", "Playground"),
)
PUBLIC = ("/login", "/static/")  # reachable without a session


def console(request: Request) -> ConsoleState:
    """The :class:`ConsoleState` of the app serving ``request``."""
    return request.app.state.console


def session_of(request: Request) -> Session | None:
    """The logged-in session of ``request`` (set by the before-request check)."""
    return request.scope["state"].get("console_session")


def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """Render ``template`` with the layout's context: team, CSRF token, navigation, messages."""
    st, session = console(request), session_of(request)
    flash: list[str] = []
    if session is not None:
        flash, session.flash = session.flash, []
    html = request.app.template_engine.get_template(template).render(
        **{
            "team": st.team,
            "backend": st.store.name,
            "csrf": session.csrf if session else "",
            "nav": NAV if session else (),
            "path": request.url.path,
            "flash": flash,
            **context,
        }
    )
    return Response(html, status_code=status, media_type=MediaType.HTML)


def done(request: Request, message: str, to: str) -> Redirect:
    """After a successful action: remember ``message`` for the next page and go to ``to``."""
    session = session_of(request)
    if session is not None:
        session.flash.append(message)
    return Redirect(path=to, status_code=303)


def failed(request: Request, exc: HubError, template: str, **context: Any) -> Response:
    """Re-render ``template`` with the CLI's one-line ``error: ...`` (status 400)."""
    return page(request, template, 400, error=f"error: {exc}", **context)


async def check_request(request: Request) -> Response | None:
    """Before every handler: the Host, then the session (401), then CSRF on POST (403)."""
    st = console(request)
    host = request.headers.get("host", "")
    if st.allowed_hosts is not None and host not in st.allowed_hosts:
        return Response("unexpected Host header", status_code=400, media_type="text/plain")
    path = request.url.path
    if path == PUBLIC[0] or path.startswith(PUBLIC[1]):
        return None
    session = st.sessions.get(request.cookies.get(st.sessions.cookie))
    if session is None:
        return page(request, "login.html", 401, message="Log in with the token printed at start.")
    request.scope["state"]["console_session"] = session
    if request.method == "POST":
        form = await request.form()
        if not same(form.get("csrf_token"), session.csrf):
            return page(
                request,
                "error.html",
                403,
                title="Forbidden",
                message="the form's CSRF token is missing or wrong: reload the page and retry",
            )
    return None


def _logged_in(request: Request, token: str | None) -> Any:
    st = console(request)
    sid = st.sessions.login(token)
    if sid is None:
        message = "Wrong login token." if token else "Log in with the token printed at start."
        return page(request, "login.html", 401, message=message)
    response = Redirect(path="/adapters", status_code=303)
    response.set_cookie(
        st.sessions.cookie, sid, httponly=True, samesite="strict", path="/", max_age=SESSION_SECONDS
    )
    return response


@get("/login", sync_to_thread=False)
def login_page(request: Request) -> Response:
    """``/login?token=...`` (the URL printed at start) or the login form."""
    return _logged_in(request, request.query_params.get("token"))


@post("/login")
async def login_form(request: Request) -> Response:
    """The login form: trade the token for a session cookie."""
    form = await request.form()
    return _logged_in(request, form.get("token"))


@post("/logout")
async def logout(request: Request) -> Response:
    """End this session (CSRF-checked like every form)."""
    sessions = console(request).sessions
    sessions.logout(request.cookies.get(sessions.cookie))
    response = page(request, "login.html", 200, message="Logged out.")
    response.delete_cookie(sessions.cookie, path="/")
    return response


@get("/", sync_to_thread=False)
def home() -> Redirect:
    """The adapters page is the home page."""
    return Redirect(path="/adapters", status_code=303)


def _error_page(request: Request, exc: Exception) -> Any:
    if isinstance(exc, HubError):
        return page(request, "error.html", 400, title="Error", message=f"error: {exc}")
    if isinstance(exc, HTTPException):
        title = "Not found" if isinstance(exc, NotFoundException) else "Error"
        return page(request, "error.html", exc.status_code, title=title, message=exc.detail)
    log.exception("console: unhandled error on %s", request.url.path)
    return page(request, "error.html", 500, title="Error", message="internal error (see the log)")


def create_console_app(state: ConsoleState) -> Any:
    """The console for ``state``, wrapped so every response carries the security headers."""
    from server.console import adapter_pages, audit_page, playground, rounds_page, runs_page

    app = Litestar(
        route_handlers=[
            login_page,
            login_form,
            logout,
            home,
            *adapter_pages.HANDLERS,
            *audit_page.HANDLERS,
            *runs_page.HANDLERS,
            *rounds_page.HANDLERS,
            *playground.HANDLERS,
            create_static_files_router(path="/static", directories=[HERE / "static"]),
        ],
        template_config=TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        before_request=check_request,
        exception_handlers={Exception: _error_page},
        openapi_config=None,
        request_max_body_size=1 << 20,
        debug=False,
    )
    app.state.console = state
    app.asgi_handler = SecurityHeaders(app.asgi_handler)
    return app
