"""The HTTP app: OpenAI chat completions, /v1/models, /health and the web chat page at /."""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavakit.api import Llava
from llavakit.engine import Engine, EngineClosed, QueueFull, RequestTooLarge
from llavakit.engine import Request as EngineRequest
from llavakit.serving.completions import Answer, complete, stream
from llavakit.serving.drain import Drain, shutting_down
from llavakit.serving.errors import APIError, validation_error
from llavakit.serving.middleware import ApiKey, BodyLimit, HostCheck
from llavakit.serving.prepare import RequestPreparer
from llavakit.serving.protocol import ChatCompletionRequest, ModelCard, ModelList
from llavakit.serving.results import ResultQueue
from llavakit.serving.settings import ServerSettings


def chat_page() -> str:
    return resources.files("llavakit.serving").joinpath("static/chat.html").read_text(encoding="utf-8")


def create_app(llava: Llava, settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """An app serving ``llava``; the engine starts and drains with the app's lifespan.

    ``app.state.drain`` runs the drain on shutdown (``llavakit serve`` starts it on SIGTERM).
    """
    engine = engine or Engine(llava, settings.engine)  # allocates the KV cache when its size is fixed
    preparer = RequestPreparer(llava, settings)
    drain = Drain()
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        # The HTTP server has finished its in-flight responses; let the scheduler finish too.
        preparer.close()
        await run_in_threadpool(engine.close, True, settings.request_timeout_s)

    app = FastAPI(title="llavakit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.settings = settings
    app.state.drain = drain
    app.state.preparer = preparer
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKey, key=settings.api_key)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)  # added last = runs first
    _install_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(chat_page())

    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.closed or drain.draining:
            raise APIError(503, "the server is shutting down", "shutting_down")
        return JSONResponse({"status": "ok", "model": settings.model_name, "queued": engine.queued,
                             "running": engine.running, "steps": engine.steps,
                             "cancelled": engine.rows_cancelled})

    @app.get("/v1/models")
    async def models() -> ModelList:
        card = ModelCard(id=settings.model_name, created=started, max_model_len=settings.max_model_len)
        return ModelList(data=[card])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout_s
        if engine.closed or drain.draining:
            raise shutting_down()
        with drain.request():
            # A client that leaves stops its request: media preparation, queueing and generation.
            work = asyncio.ensure_future(answer_request(body, deadline))
            gone = asyncio.ensure_future(disconnected(request))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, APIError):
                    await work
                return APIError(499, "the client closed the connection", "client_closed").response()
            return work.result()

    async def answer_request(body: ChatCompletionRequest, deadline: float):
        loop = asyncio.get_running_loop()
        if engine.queued >= settings.engine.max_queued:  # before any decoding: the queue would refuse it
            raise queue_full(f"{engine.queued} requests are already waiting")
        # asyncio.wait, not wait_for: on the older Pythons this project supports, wait_for returns the
        # prepared request when the client leaves in the same loop step, and it is then generated for nobody.
        preparing = asyncio.ensure_future(preparer(body))
        try:
            await asyncio.wait({preparing}, timeout=max(deadline - loop.time(), 0))
        finally:
            if not preparing.done():  # the client left or the time is up; its error, if any, is nobody's
                preparing.cancel()
                preparing.add_done_callback(lambda task: task.cancelled() or task.exception())
        if not preparing.done():
            raise APIError(504, "preparing the request's media did not finish within the server's time limit "
                                "(--request-timeout)", "request_timeout")
        prepared = preparing.result()
        results = ResultQueue(loop, prepared.n)
        job = EngineRequest(prepared.inputs, prepared.settings, results, prepared.n, prepared.stop, prepared.ignore_eos)
        try:
            engine.submit(job)
        except QueueFull as err:
            raise queue_full(str(err)) from None
        except EngineClosed:
            raise shutting_down() from None
        except RequestTooLarge as err:
            raise APIError(400, f"{err}; lower max_tokens or n, or shorten the messages", "request_too_large",
                           "messages") from None
        answer = Answer(job, results, settings.model_name, prepared.prompt_tokens, deadline)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(drain.tracked_stream(results, stream(answer, include_usage)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        with drain.answering(results):
            return await complete(answer)

    return app


def queue_full(reason: str) -> APIError:
    return APIError(429, f"the server is busy: {reason}; retry shortly", "queue_full", headers={"Retry-After": "1"})


async def disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(list(error.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        messages = {404: f"no route {path}", 405: f"method {request.method} is not allowed on {path}"}
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return APIError(error.status_code, messages.get(error.status_code, str(error.detail)), code).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette logs the traceback after this response is sent; the server keeps running.
        return APIError(500, f"internal error ({type(error).__name__}); the request was not answered",
                        "internal_error").response()
