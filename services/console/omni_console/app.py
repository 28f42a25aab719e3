"""The console's web application (Starlette): routes, templates and the assets it serves.

Pages are HTML rendered on the server (Jinja2); htmx swaps in the parts that change while the user works (the
next page of a timeline, a rule's live preview, an explanation), and vega-embed draws the charts from the
Vega-Lite specs in charts.py. Every script comes from the npm packages of package-lock.json, served from here:
the console works without reaching any other site.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from omni.decisioning.v1 import decisioning_pb2, experiments_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_console import charts, experiments, journeys, lookup, person, reports, reviews, segments
from omni_console.clients import Clients
from omni_console.formatting import (
    channel_icon,
    channel_name,
    enum_name,
    money_text,
    plain,
    shown_time,
    value_text,
    when,
)
from omni_console.settings import Settings

HERE = Path(__file__).parent
VENDOR = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "vega.min.js": "vega/build/vega.min.js",
    "vega-lite.min.js": "vega-lite/build/vega-lite.min.js",
    "vega-embed.min.js": "vega-embed/build/vega-embed.min.js",
}
"""The scripts the pages load, by the name they are served under, from the npm packages."""


def assets_dir(settings: Settings) -> Path:
    """Where the npm packages are: the setting, else node_modules of the repository the console runs from."""
    if settings.assets_dir.is_absolute() or settings.assets_dir.exists():
        return settings.assets_dir
    for parent in HERE.parents:
        if (parent / "node_modules").is_dir():
            return parent / "node_modules"
    return settings.assets_dir


def templates() -> Jinja2Templates:
    """The pages' templates, with the helpers they format values with."""
    found = Jinja2Templates(directory=str(HERE / "templates"))
    found.env.globals.update(
        channel_name=channel_name,
        channel_icon=channel_icon,
        enum_name=enum_name,
        money_text=money_text,
        plain=plain,
        shown_time=shown_time,
        value_text=value_text,
        when=when,
        merge_rule=identity_pb2.MergeRule,
        consent_purpose=profile_pb2.ConsentPurpose,
        consent_state=profile_pb2.ConsentState,
        journey_state=decisioning_pb2.JourneyState,
        run_state=decisioning_pb2.JourneyRun.RunState,
        record_fields=reviews.RECORD_FIELDS,
        record_value=reviews.record_value,
        experiment_state=experiments_pb2.ExperimentState,
        estimate_text=experiments.estimate_text,
        percent=experiments.percent,
        arm_text=experiments.arm_text,
        verdict_text=experiments.verdict_text,
    )
    return found


class _ServerTiming(BaseHTTPMiddleware):
    """Say how long the server took on each answer (the Server-Timing header), and refuse cross-site posts."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method == "POST" and not _same_origin(request):
            return PlainTextResponse("cross-site form posts are refused", status_code=403)
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def build(settings: Settings, clients: Clients | None = None) -> Starlette:
    """The console application; it opens its clients at start unless given them (and then leaves them open)."""
    pages = templates()
    vendor_root = assets_dir(settings)
    state: dict[str, Clients] = {} if clients is None else {"clients": clients}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["clients"] = clients or Clients.open(settings)
        try:
            yield
        finally:
            if clients is None:
                await state["clients"].close()

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        the_clients = state["clients"]
        context.setdefault("scopes", sorted(the_clients.scopes))
        return pages.TemplateResponse(request, name, context, status_code=status_code)

    async def home(request: Request) -> Response:
        return RedirectResponse("/persons", status_code=303)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def vendor(request: Request) -> Response:
        relative = VENDOR.get(request.path_params["name"])
        if relative is None or not (vendor_root / relative).is_file():
            return PlainTextResponse(
                "not found (run `make env` to install the npm packages)", status_code=404
            )
        return FileResponse(vendor_root / relative, headers={"Cache-Control": "public, max-age=3600"})

    # -- persons --------------------------------------------------------------------------------------

    async def persons(request: Request) -> Response:
        text = request.query_params.get("q", "")
        kind = request.query_params.get("kind", "auto")
        if not text:
            return render(request, "search.html", q="", kind=kind, kinds=lookup.KINDS, problem=None)
        try:
            tried = lookup.candidates(text, kind, settings.default_phone_region)
        except lookup.QueryError as error:
            return render(
                request, "search.html", 400, q=text, kind=kind, kinds=lookup.KINDS, problem=str(error)
            )
        found = await person.find(state["clients"], tried)
        if found.person_id is None:
            return render(
                request, "search.html", 404, q=text, kind=kind, kinds=lookup.KINDS, problem=found.problem
            )
        return RedirectResponse(f"/persons/{found.person_id}", status_code=303)

    async def person_page(request: Request) -> Response:
        person_id = request.path_params["person_id"]
        view = await person.load(
            state["clients"],
            str(person_id),
            page_size=settings.timeline_page_size,
            message_scan=settings.message_scan_events,
        )
        status = 404 if view.person.problem and view.person.problem.startswith("NOT_FOUND") else 200
        return render(
            request,
            "person.html",
            status,
            view=view,
            notice=request.query_params.get("notice"),
            unmerge_request_id=f"console-{uuid.uuid4()}",
            can_unmerge=state["clients"].allows(reviews.MERGE),
        )

    async def timeline(request: Request) -> Response:
        person_id = str(request.path_params["person_id"])
        page = await person.timeline_page(
            state["clients"],
            person_id,
            settings.timeline_page_size,
            request.query_params.get("page_token", ""),
        )
        return render(request, "_timeline_rows.html", person_id=person_id, timeline=page)

    async def unmerge(request: Request) -> Response:
        person_id = str(request.path_params["person_id"])
        form = await request.form()
        result = await reviews.unmerge(
            state["clients"],
            str(form.get("merged_person_id", "")),
            str(form.get("reason", "")),
            str(form.get("request_id", "")),
        )
        notice = "Unmerged." if result.ok else f"Not unmerged: {result.problem}"
        return RedirectResponse(f"/persons/{person_id}?notice={_quote(notice)}", status_code=303)

    # -- segments -------------------------------------------------------------------------------------

    async def segment_list(request: Request) -> Response:
        return render(request, "segments.html", segments=await segments.listing(state["clients"]))

    async def segment_page(request: Request) -> Response:
        segment_id = str(request.path_params["segment_id"])
        the_clients = state["clients"]
        found = await segments.segment(the_clients, segment_id)
        if found.value is None:
            return render(request, "problem.html", 404, title="Segment", problem=found.problem)
        sizes = await segments.sizes(the_clients, segment_id)
        count = await segments.count(the_clients, segment_id)
        spec = charts.segment_sizes(found.value.name, sizes.value) if sizes.value else None
        return render(
            request,
            "segment.html",
            segment=found.value,
            rule=segments.rule_text(found.value.condition),
            sizes=sizes,
            count=count,
            spec=spec,
            can_export=the_clients.allows(segments.MEMBERS),
        )

    async def segment_editor(request: Request) -> Response:
        import json

        return render(request, "segment_editor.html", rule=json.dumps(segments.EXAMPLE_RULE, indent=2))

    async def segment_preview(request: Request) -> Response:
        form = await request.form()
        result = await segments.preview(state["clients"], str(form.get("rule", "")))
        rows = (
            []
            if result.response is None
            else [(c.field or "(rule)", c.match_count) for c in result.response.condition_counts]
        )
        spec = charts.condition_counts(rows) if len(rows) > 1 else None
        return render(request, "_preview.html", preview=result, spec=spec, rows=rows)

    async def segment_explain(request: Request) -> Response:
        segment_id = str(request.path_params["segment_id"])
        text = request.query_params.get("q", "")
        problem = None
        explanation = None
        try:
            tried = lookup.candidates(text, "auto", settings.default_phone_region)
            found = await person.find(state["clients"], tried)
            if found.person_id is None:
                problem = found.problem
            else:
                explanation = await segments.explain(state["clients"], segment_id, found.person_id)
                problem = explanation.problem
        except lookup.QueryError as error:
            problem = str(error)
        return render(request, "_explain.html", explanation=explanation, problem=problem)

    async def segment_export(request: Request) -> Response:
        segment_id = str(request.path_params["segment_id"])
        the_clients = state["clients"]
        if not the_clients.allows(segments.MEMBERS):
            return PlainTextResponse(
                f"the console's credentials do not hold {segments.MEMBERS}", status_code=403
            )
        return StreamingResponse(
            segments.export_lines(the_clients, segment_id),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="segment-{segment_id}.csv"'},
        )

    # -- identity review ------------------------------------------------------------------------------

    async def review_queue(request: Request) -> Response:
        return render(
            request,
            "reviews.html",
            reviews=await reviews.queue(state["clients"]),
            notice=request.query_params.get("notice"),
            can_settle=state["clients"].allows(reviews.REVIEW),
        )

    async def review_settle(request: Request) -> Response:
        decision_id = str(request.path_params["decision_id"])
        form = await request.form()
        choice = str(form.get("choice", ""))
        outcome, _, person_id = choice.partition(":")
        result = await reviews.settle(
            state["clients"],
            decision_id,
            outcome,
            person_id,
            str(form.get("reviewer", "")),
            str(form.get("reason", "")),
            str(form.get("request_id", "")),
        )
        if result.value is not None:
            notice = f"Settled: the record is person {result.value.result.person_id}."
        else:
            notice = f"Not settled: {result.problem}"
        return RedirectResponse(f"/reviews?notice={_quote(notice)}", status_code=303)

    # -- journeys -------------------------------------------------------------------------------------

    async def journey_list(request: Request) -> Response:
        return render(request, "journeys.html", journeys=await journeys.listing(state["clients"]))

    async def journey_page(request: Request) -> Response:
        found = await journeys.view(state["clients"], str(request.path_params["journey_id"]))
        if found.value is None:
            return render(request, "problem.html", 404, title="Journey", problem=found.problem)
        counted = [(step.title, step.persons) for step in found.value.steps]
        spec = charts.journey_funnel(counted) if any(n is not None for _, n in counted) else None
        return render(request, "journey.html", view=found.value, spec=spec, funnel_rows=counted)

    # -- experiments and reports ----------------------------------------------------------------------

    async def experiment_list(request: Request) -> Response:
        archived = request.query_params.get("archived") == "1"
        found = await experiments.listing(state["clients"], show_archived=archived)
        return render(request, "experiments.html", experiments=found, archived=archived)

    async def experiment_page(request: Request) -> Response:
        found = await experiments.view(state["clients"], str(request.path_params["experiment_id"]))
        if found.value is None:
            return render(request, "problem.html", 404, title="Experiment", problem=found.problem)
        results = found.value.results.value
        rate_spec = lift_spec = None
        rate_rows: list[list[str]] = []
        lift_rows: list[list[str]] = []
        if results is not None and results.arms:
            rates = [
                (a.arm, a.conversion_rate.value, a.conversion_rate.low, a.conversion_rate.high)
                for a in results.arms
            ]
            rate_spec = charts.estimates(
                "Conversion rate per arm with 95% intervals", rates, "conversion rate"
            )
            rate_rows = [
                [
                    a.arm,
                    f"{a.exposures:,}",
                    f"{a.conversions:,}",
                    experiments.estimate_text(a.conversion_rate),
                ]
                for a in results.arms
            ]
            lifts = [
                (a.arm, a.conversion_lift.value, a.conversion_lift.low, a.conversion_lift.high)
                for a in results.arms
                if a.HasField("conversion_lift")
            ]
            if lifts:
                lift_spec = charts.estimates(
                    "Lift of the conversion rate over the control with 95% intervals",
                    lifts,
                    "lift vs control",
                )
                lift_rows = [
                    [a.arm, experiments.estimate_text(a.conversion_lift, signed=True), a.verdict]
                    for a in results.arms
                    if a.HasField("conversion_lift")
                ]
        attachment, attachment_link = experiments.attachment_text(found.value.experiment.attachment)
        return render(
            request,
            "experiment.html",
            view=found.value,
            attachment=attachment,
            attachment_link=attachment_link,
            sample_ratio=experiments.sample_ratio_text(results) if results is not None else None,
            rate_spec=rate_spec,
            rate_rows=rate_rows,
            lift_spec=lift_spec,
            lift_rows=lift_rows,
        )

    async def report_page(request: Request) -> Response:
        model = request.query_params.get("model", "last-touch")
        if model not in reports.MODELS:
            return render(
                request, "problem.html", 400, title="Reports", problem=f"no attribution model {model}"
            )
        loaded = await reports.load(state["clients"], request.query_params.get("definition", ""), model)
        specs: dict[str, Any] = {}
        chart_rows: dict[str, list[list[str]]] = {}
        for name, part in (("channel", loaded.channel), ("channel-count", loaded.channel_count)):
            if part is not None and part.value is not None and part.value.rows:
                specs[name] = charts.estimates(
                    f"Conversion rate by {name.replace('-', ' ')} with 95% intervals",
                    reports.rate_rows(part.value),
                    "conversion rate",
                )
                chart_rows[name] = [
                    [row.value, experiments.estimate_text(row.conversion_rate)] for row in part.value.rows
                ]
        return render(
            request,
            "reports.html",
            reports=loaded,
            specs=specs,
            chart_rows=chart_rows,
            models=list(reports.MODELS),
            observational=reports.OBSERVATIONAL,
        )

    async def report_export(request: Request) -> Response:
        dimension = str(request.path_params["dimension"])
        definition_id = request.query_params.get("definition", "")
        model = request.query_params.get("model", "last-touch")
        try:
            exported = await reports.export(state["clients"], dimension, definition_id, model)
        except reports.ReportQueryError as error:
            return PlainTextResponse(str(error), status_code=400)
        if exported.value is None:
            status = (
                403 if exported.denied else 400 if "INVALID_ARGUMENT" in (exported.problem or "") else 502
            )
            return PlainTextResponse(exported.problem or "", status_code=status)
        return Response(
            exported.value,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="report-{dimension}-{model}.csv"'},
        )

    routes = [
        Route("/", home),
        Route("/healthz", health),
        Route("/vendor/{name}", vendor),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        Route("/persons", persons),
        Route("/persons/{person_id:uuid}", person_page),
        Route("/persons/{person_id:uuid}/timeline", timeline),
        Route("/persons/{person_id:uuid}/unmerge", unmerge, methods=["POST"]),
        Route("/segments", segment_list),
        Route("/segments/new", segment_editor),
        Route("/segments/preview", segment_preview, methods=["POST"]),
        Route("/segments/{segment_id:uuid}", segment_page),
        Route("/segments/{segment_id:uuid}/explain", segment_explain),
        Route("/segments/{segment_id:uuid}/members.csv", segment_export),
        Route("/reviews", review_queue),
        Route("/reviews/{decision_id:uuid}/settle", review_settle, methods=["POST"]),
        Route("/journeys", journey_list),
        Route("/journeys/{journey_id}", journey_page),
        Route("/experiments", experiment_list),
        Route("/experiments/{experiment_id:uuid}", experiment_page),
        Route("/reports", report_page),
        Route("/reports/{dimension}.csv", report_export),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_ServerTiming)])


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])
