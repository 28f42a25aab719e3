"""The values experiments and outcome reports work with, shared by their domain modules and repository."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The experiment id under which the global control group's exposures are kept.
GLOBAL_CONTROL_ID = uuid.UUID(int=0)
GLOBAL_CONTROL_ARM = "global_control"
MARKETED_ARM = "marketed"


class ExperimentState(enum.StrEnum):
    """Where an experiment is in its life."""

    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"
    ARCHIVED = "archived"


class AttachmentKind(enum.StrEnum):
    """What an experiment varies."""

    JOURNEY = "journey"
    JOURNEY_STEP = "journey_step"
    TEMPLATE = "template"
    OFFER_GROUP = "offer_group"


@dataclass(frozen=True)
class Attachment:
    """An experiment's attachment: a journey id, a journey step ("<journey id>/<step id>"), a template id or an
    offer group."""

    kind: AttachmentKind
    value: str

    @classmethod
    def journey_step(cls, journey_id: uuid.UUID | str, step_id: str) -> Attachment:
        """The attachment of one step of a multi-step journey."""
        return cls(AttachmentKind.JOURNEY_STEP, f"{uuid.UUID(str(journey_id))}/{step_id}")

    def journey_and_step(self) -> tuple[uuid.UUID, str]:
        """A journey step attachment's journey id and step id."""
        journey, _, step = self.value.partition("/")
        return uuid.UUID(journey), step


@dataclass(frozen=True)
class Arm:
    """One variant: its share, and what it changes (nothing sent, for a holdout)."""

    name: str
    allocation_percent: int
    holdout: bool = False
    template_id: str = ""
    channel: int = 0
    send_delay_s: int = 0
    offer_id: str = ""
    control: bool = False


@dataclass(frozen=True)
class NewExperiment:
    """An experiment as asked for."""

    name: str
    description: str
    attachment: Attachment
    arms: tuple[Arm, ...]
    conversion_definition_id: uuid.UUID


@dataclass(frozen=True)
class Experiment(NewExperiment):
    """A stored experiment."""

    id: uuid.UUID = field(kw_only=True)
    state: ExperimentState = field(kw_only=True)
    create_time: datetime = field(kw_only=True)
    start_time: datetime | None = field(kw_only=True, default=None)
    stop_time: datetime | None = field(kw_only=True, default=None)
    archive_time: datetime | None = field(kw_only=True, default=None)


@dataclass(frozen=True)
class Assignment:
    """What a send does for a person: the experiment and arm they are in (if any), whether nothing is sent
    (a holdout arm or the global control group), and what the arm changes."""

    experiment_id: uuid.UUID | None = None
    arm: str = ""
    holdout: bool = False
    global_control: bool = False
    template_id: str = ""
    channel: int = 0
    send_delay_s: int = 0

    @property
    def sends(self) -> bool:
        """Whether a message goes out."""
        return not (self.holdout or self.global_control)


class Operator(enum.IntEnum):
    """A property filter's comparison (the numbers of reports.proto's FilterOperator)."""

    EQUAL = 1
    NOT_EQUAL = 2
    GREATER = 3
    GREATER_OR_EQUAL = 4
    LESS = 5
    LESS_OR_EQUAL = 6
    EXISTS = 7


@dataclass(frozen=True)
class PropertyFilter:
    """One condition on an event's properties."""

    path: str
    operator: Operator
    value: Any = None


class Anchor(enum.StrEnum):
    """What a conversion window starts at."""

    DELIVERY = "delivery"
    IMPRESSION = "impression"


@dataclass(frozen=True)
class NewConversionDefinition:
    """A conversion definition as asked for."""

    name: str
    event_type: str
    filters: tuple[PropertyFilter, ...]
    window_s: int
    anchor: Anchor
    revenue_property: str
    currency: str


@dataclass(frozen=True)
class ConversionDefinition(NewConversionDefinition):
    """A stored conversion definition."""

    id: uuid.UUID = field(kw_only=True)
    create_time: datetime = field(kw_only=True)


class Model(enum.StrEnum):
    """An attribution model."""

    LAST_TOUCH = "last_touch"
    FIRST_TOUCH = "first_touch"
    LINEAR = "linear"


class Dimension(enum.StrEnum):
    """What a report is by."""

    CHANNEL = "channel"
    JOURNEY = "journey"
    TEMPLATE = "template"
    EXPERIMENT_ARM = "experiment_arm"
    ACQUISITION_SOURCE = "acquisition_source"
    CHANNEL_COUNT = "channel_count"
    OFFER = "offer"


# The dimensions a message's rollups are kept by, and an impression's.
MESSAGE_DIMENSIONS = (
    Dimension.CHANNEL,
    Dimension.JOURNEY,
    Dimension.TEMPLATE,
    Dimension.EXPERIMENT_ARM,
    Dimension.ACQUISITION_SOURCE,
)
IMPRESSION_DIMENSIONS = (Dimension.OFFER,)


@dataclass(frozen=True)
class Touch:
    """A message sent or an offer shown to a person, with its dimensions' values."""

    touch_id: str
    kind: str  # "message" or "impression"
    person_id: uuid.UUID
    channel: int
    journey: str
    template: str
    experiment_arm: str
    offer: str
    source: str
    sent_at: datetime
    anchor_at: datetime | None = None

    def values(self) -> dict[Dimension, str]:
        """The value of each dimension its rollups are kept by."""
        if self.kind == "impression":
            return {Dimension.OFFER: self.offer}
        return {
            Dimension.CHANNEL: channel_name(self.channel),
            Dimension.JOURNEY: self.journey,
            Dimension.TEMPLATE: self.template,
            Dimension.EXPERIMENT_ARM: self.experiment_arm,
            Dimension.ACQUISITION_SOURCE: self.source,
        }


_CHANNELS = {1: "web", 2: "app", 3: "email", 4: "sms", 5: "push", 6: "store", 7: "call_center", 8: "webhook"}


def channel_name(channel: int) -> str:
    """A channel's name in reports ("email"); "unspecified" for 0."""
    return _CHANNELS.get(channel, "unspecified")
