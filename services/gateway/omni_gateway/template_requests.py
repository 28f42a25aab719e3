"""What the template RPCs check that gateway.proto cannot say: the size of the variants, their Liquid and
locales (templates.variant_problems), the rules of a template written for one channel (subject and bodies),
and the update mask; each problem recorded into the request's Violations by its path
("template.variants[1].sms.text"), so a caller learns all of them at once."""

from __future__ import annotations

from dataclasses import replace

from omni.gateway.v1 import gateway_pb2
from omni_gateway.domain import Channel
from omni_gateway.rendering import Renderer, TemplateParts
from omni_gateway.templates import StoredTemplate, kind_of, legacy_parts, legacy_variant, variant_problems
from omni_gateway.variants import Variant, VariantKind
from omni_gateway.wire import variant_from_proto
from omni_kit import validation
from omni_kit.errors import FieldViolation, InvalidArgument, Violations

MAX_VARIANTS_BYTES = 1024 * 1024
"""A template's variants together, in their protobuf encoding (gateway.proto)."""

LEGACY_FIELDS = ("subject", "body_text", "body_html")
"""The fields of a template written for one channel."""
UPDATABLE_FIELDS = ("variants", *LEGACY_FIELDS)
"""The fields of a template an update may change."""


def check_template_size(template: gateway_pb2.Template, prefix: str = "template") -> Violations:
    """The variants' count and size, checked before protovalidate reads them all."""
    violations = validation.check_counts(template, prefix=prefix)
    size = sum(v.ByteSize() for v in template.variants)
    if size > MAX_VARIANTS_BYTES:
        violations.add(f"{prefix}.variants", f"at most {MAX_VARIANTS_BYTES} bytes encoded, not {size}")
    return violations


def request_variants(
    template: gateway_pb2.Template, renderer: Renderer, violations: Violations
) -> list[Variant]:
    """The request's variants (which passed the proto's rules), their problems added to violations."""
    variants = [variant_from_proto(v) for v in template.variants]
    for path, problem in variant_problems(variants, renderer):
        violations.add(f"template.variants{path}", problem)
    return variants


def check_one_channel(
    channel: Channel | None,
    parts: TemplateParts,
    fields: set[str],
    renderer: Renderer,
    violations: Violations,
) -> None:
    """The rules of a template written for one channel: the channel must have variants, the text is required
    and so is a subject for email (the title for push), and the Liquid of the fields given must parse."""
    if channel is not None and kind_of(channel) is None:
        violations.add(
            "template.channel",
            f"{channel.value} has no template variant (email, SMS, push, app and store have)",
        )
    if "body_text" in fields and not parts.body_text.strip():
        violations.add("template.body_text", "required")
    if "subject" in fields and not parts.subject.strip():
        if channel == Channel.EMAIL:
            violations.add("template.subject", "required for email")
        elif channel is not None and kind_of(channel) == VariantKind.PUSH:
            violations.add("template.subject", "required for push (the title)")
    if not violations:
        for name, problem in renderer.problems(parts).items():
            if name in fields:
                violations.add(f"template.{name}", problem)


def check_update(request: gateway_pb2.UpdateTemplateRequest) -> tuple[set[str], Violations]:
    """The fields an update changes and what is wrong with the request (omni_kit.validation.check_update:
    the mask's paths, the proto's rules for the fields they name and the id). "*" or no mask means
    "variants" when the request has variants, and the fields of a template written for one channel when it
    has none."""
    violations = check_template_size(request.template)
    if violations:
        return set(), violations
    paths, violations = validation.check_update(request, "template", request.update_mask, UPDATABLE_FIELDS)
    if set(request.update_mask.paths) <= {"*"}:
        paths = {"variants"} if request.template.variants else set(LEGACY_FIELDS)
    return paths, violations


def change_one_channel(
    latest: StoredTemplate,
    variants: list[Variant],
    template: gateway_pb2.Template,
    fields: set[str],
    renderer: Renderer,
) -> list[Variant]:
    """The variants with the parts of a template written for one channel changed as the request's subject
    and bodies say (the fields in the mask); InvalidArgument for a template written with variants, or parts
    that break the one-channel rules."""
    if latest.channel is None:
        raise InvalidArgument(
            message="subject and bodies belong to templates written for one channel",
            violations=[
                FieldViolation("update_mask", f"template {latest.id!r} has variants: change variants instead")
            ],
        )
    current = legacy_parts(replace(latest, variants=tuple(variants)))
    parts = TemplateParts(
        subject=template.subject if "subject" in fields else current.subject,
        body_text=template.body_text if "body_text" in fields else current.body_text,
        body_html=template.body_html if "body_html" in fields else current.body_html,
    )
    violations = Violations()
    check_one_channel(latest.channel, parts, fields | {"body_text", "subject"}, renderer, violations)
    violations.raise_if_any("the template is not valid")
    variant = legacy_variant(latest.channel, parts.subject, parts.body_text, parts.body_html)
    assert variant is not None  # check_one_channel refused channels without variants
    others = [v for v in variants if (v.kind, v.locale) != (variant.kind, "")]
    return [variant, *others]
