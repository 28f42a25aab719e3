"""Charts as Vega-Lite specs (dicts the pages hand to vega-embed): no chart is drawn by hand."""

from __future__ import annotations

import math
from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"


def segment_sizes(name: str, sizes: list[tuple[str, int]]) -> dict[str, Any]:
    """A segment's members per day, as a line with points (each point's tooltip gives day and count)."""
    return {
        "$schema": SCHEMA,
        "description": f"Members of segment {name} per day",
        "width": "container",
        "height": 160,
        "data": {"values": [{"day": day, "members": count} for day, count in sizes]},
        "mark": {"type": "line", "point": True, "tooltip": True},
        "encoding": {
            "x": {"field": "day", "type": "temporal", "title": "day"},
            "y": {
                "field": "members",
                "type": "quantitative",
                "title": "members",
                "axis": {"format": "d", "tickMinStep": 1},
            },
        },
    }


def condition_counts(counts: list[tuple[str, int]]) -> dict[str, Any]:
    """How many persons each part of a rule matches, as horizontal bars."""
    return {
        "$schema": SCHEMA,
        "description": "Persons matching each condition of the rule",
        "width": "container",
        "height": {"step": 22},
        "data": {"values": [{"condition": field or "(rule)", "persons": n} for field, n in counts]},
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "y": {"field": "condition", "type": "nominal", "sort": None, "title": None},
            "x": {"field": "persons", "type": "quantitative", "axis": {"format": "d", "tickMinStep": 1}},
        },
    }


def journey_funnel(steps: list[tuple[str, int | None]]) -> dict[str, Any]:
    """A journey's persons per step, in step order, as a funnel of bars."""
    return {
        "$schema": SCHEMA,
        "description": "Persons per journey step",
        "width": "container",
        "height": {"step": 28},
        "data": {"values": [{"step": step, "persons": n} for step, n in steps if n is not None]},
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "y": {"field": "step", "type": "nominal", "sort": None, "title": None},
            "x": {"field": "persons", "type": "quantitative", "axis": {"format": "d", "tickMinStep": 1}},
        },
    }


def _finite(number: float) -> float | None:
    return number if math.isfinite(number) else None


def estimates(description: str, rows: list[tuple[str, float, float, float]], title: str) -> dict[str, Any]:
    """Estimates with their 95% intervals, one row each: a point and an error bar (an unbounded end draws no
    bar), with a rule at 0 so a lift's interval is seen to include it or not. Values are shares (0.12 = 12%)."""
    values = [
        {"label": label, "value": _finite(value), "low": _finite(low), "high": _finite(high)}
        for label, value, low, high in rows
    ]
    axis = {"format": ".1%"}
    label_axis = {"field": "label", "type": "nominal", "sort": None, "title": None}
    return {
        "$schema": SCHEMA,
        "description": description,
        "width": "container",
        "height": {"step": 32},
        "data": {"values": values},
        "layer": [
            {
                "mark": {"type": "rule", "strokeDash": [4, 4], "color": "#666"},
                "data": {"values": [{"zero": 0}]},
                "encoding": {"x": {"field": "zero", "type": "quantitative"}},
            },
            {
                "transform": [{"filter": "isValid(datum.low) && isValid(datum.high)"}],
                "mark": {"type": "errorbar", "ticks": True},
                "encoding": {
                    "y": label_axis,
                    "x": {"field": "low", "type": "quantitative", "title": title, "axis": axis},
                    "x2": {"field": "high"},
                },
            },
            {
                "mark": {"type": "point", "filled": True, "size": 70, "tooltip": True},
                "encoding": {
                    "y": label_axis,
                    "x": {"field": "value", "type": "quantitative", "title": title, "axis": axis},
                    "tooltip": [
                        {"field": "label", "type": "nominal"},
                        {"field": "value", "type": "quantitative", "format": ".2%"},
                        {"field": "low", "type": "quantitative", "format": ".2%", "title": "95% low"},
                        {"field": "high", "type": "quantitative", "format": ".2%", "title": "95% high"},
                    ],
                },
            },
        ],
    }
