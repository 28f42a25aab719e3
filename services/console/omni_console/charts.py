"""Charts as Vega-Lite specs (dicts the pages hand to vega-embed): no chart is drawn by hand."""

from __future__ import annotations

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
