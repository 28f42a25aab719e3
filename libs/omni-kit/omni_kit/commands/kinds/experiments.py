"""Experiments (decisioning's ExperimentService): named by `name`. The YAML spec holds what the experiment
is (description, attachment, arms, conversion definition) and, optionally, the `state` it should be in:
unset (or EXPERIMENT_STATE_DRAFT) a draft, EXPERIMENT_STATE_RUNNING started, EXPERIMENT_STATE_STOPPED
stopped. References by name: the attachment's `journey` (a multi-step journey), an arm's `offer`, the
`conversion_definition`; templates by their id as always.

Apply creates a missing experiment (and starts, then stops it when the file says so) and moves a live one
forward (StartExperiment, StopExperiment). Nothing else about an experiment can change: ExperimentService has
no update, and a running experiment's arms must not change under its results. Such a difference is reported
and not applied; define a new experiment under another name. --prune archives (ArchiveExperiment).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from omni.decisioning.v1 import experiments_pb2 as pb
from omni.decisioning.v1 import experiments_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients, CommandError
from omni_kit.commands.kinds import Kind, list_all

ORDER = (pb.EXPERIMENT_STATE_DRAFT, pb.EXPERIMENT_STATE_RUNNING, pb.EXPERIMENT_STATE_STOPPED)
"""The states a file may ask for, in the only order an experiment moves through them."""


def _state(experiment: Message) -> int:
    assert isinstance(experiment, pb.Experiment)
    return experiment.state or pb.EXPERIMENT_STATE_DRAFT


def _state_name(state: int) -> str:
    return pb.ExperimentState.Name(state).removeprefix("EXPERIMENT_STATE_").lower()  # type: ignore[arg-type]


class Experiments(Kind):
    """A/B tests with holdouts on what journeys send."""

    name = "Experiment"
    plural = "experiments"
    service = "decisioning"
    message = pb.Experiment
    spec_fields = ("name", "description", "attachment", "arms", "conversion_definition_id", "state")
    references = {
        "journey": ("journey_id", "MultiStepJourney"),
        "offer": ("offer_id", "Offer"),
        "conversion_definition": ("conversion_definition_id", "ConversionDefinition"),
    }

    def spec(self, resource: Message) -> dict[str, Any]:
        """A draft is written without `state` (a file without one means a draft)."""
        data = super().spec(resource)
        if data.get("state") == "EXPERIMENT_STATE_DRAFT":
            del data["state"]
        return data

    def refusal(self, live: Message, desired: Message, fields: list[str]) -> str:
        assert isinstance(live, pb.Experiment)
        changed = [field for field in fields if field != "state"]
        if changed:
            return (
                f"a {_state_name(_state(live))} experiment's {', '.join(changed)} cannot change: "
                "define a new experiment under another name"
            )
        have, want = _state(live), _state(desired)
        if want not in ORDER or ORDER.index(want) < ORDER.index(have):
            return f"a {_state_name(have)} experiment cannot become {_state_name(want)}"
        return ""

    def _stub(self, clients: Clients) -> grpc_pb.ExperimentServiceStub:
        return grpc_pb.ExperimentServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        return await list_all(self._stub(clients).ListExperiments, pb.ListExperimentsRequest(), "experiments")

    async def _move(self, clients: Clients, experiment: pb.Experiment, state: int) -> Message:
        """Start and/or stop an experiment until it is in the state asked for."""
        stub = self._stub(clients)
        if state not in ORDER:
            raise CommandError(f"experiment {experiment.name}: state must be draft, running or stopped")
        while ORDER.index(_state(experiment)) < ORDER.index(state):
            if _state(experiment) == pb.EXPERIMENT_STATE_DRAFT:
                request = pb.StartExperimentRequest(experiment_id=experiment.id)
                experiment = (await stub.StartExperiment(request)).experiment
            else:
                request2 = pb.StopExperimentRequest(experiment_id=experiment.id)
                experiment = (await stub.StopExperiment(request2)).experiment
        return experiment

    async def create(self, clients: Clients, desired: Message) -> Message:
        assert isinstance(desired, pb.Experiment)
        draft = pb.Experiment()
        draft.CopyFrom(desired)
        draft.ClearField("state")
        request = pb.CreateExperimentRequest(experiment=draft, request_id=self.request_id("create", draft))
        created = (await self._stub(clients).CreateExperiment(request)).experiment
        return await self._move(clients, created, _state(desired))

    async def update(self, clients: Clients, live: Message, desired: Message, mask: list[str]) -> Message:
        assert isinstance(live, pb.Experiment)
        reason = self.refusal(live, desired, mask)
        if reason:
            raise CommandError(f"experiment {live.name}: {reason}")
        return await self._move(clients, live, _state(desired))

    async def archive(self, clients: Clients, live: Message) -> None:
        assert isinstance(live, pb.Experiment)
        stub = self._stub(clients)
        if _state(live) == pb.EXPERIMENT_STATE_RUNNING:  # only a draft or a stopped experiment is archived
            await stub.StopExperiment(pb.StopExperimentRequest(experiment_id=live.id))
        await stub.ArchiveExperiment(pb.ArchiveExperimentRequest(experiment_id=live.id))


KIND = Experiments()
