"""The base of the drivers' models of Neutron's API answers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class NeutronModel(BaseModel):
    """Neutron's API JSON: keep the fields the driver reads, ignore the rest."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
