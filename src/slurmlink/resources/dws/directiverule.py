"""The DWS ``DWDirectiveRule`` kind: the grammar of ``#DW`` commands and which driver watches which state."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, Strategy
from slurmlink.resources.schema import validate_part


class RuleDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    key: StrictStr
    # Not an enum in upstream's CRD: an unknown type is accepted here and reported when a
    # directive is checked against it ("unsupported rule type '...'").
    type: StrictStr
    pattern: StrictStr | None = None
    patterns: list[StrictStr] | None = None
    min: StrictInt | None = None
    max: StrictInt | None = None
    isRequired: StrictBool | None = None
    isValueRequired: StrictBool | None = None
    uniqueWithin: StrictStr | None = None


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    command: StrictStr
    driverLabel: StrictStr | None = None
    watchStates: StrictStr | None = None
    ruleDefs: Annotated[list[RuleDef], Field(min_length=0)]


class _Rules(BaseModel):
    spec: list[RuleSpec]


class DirectiveRuleObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: list[RuleSpec] | None = None


class DirectiveRuleStrategy(Strategy):
    structure = DirectiveRuleObject

    def validate_schema(self, obj: Obj) -> list[Cause]:
        if "spec" not in obj:
            return []
        causes = validate_part(_Rules, {"spec": obj["spec"]}, "")
        return [Cause(c.field.lstrip("."), c.message, c.reason) for c in causes]


DW_DIRECTIVE_RULE = Kind(
    group=GROUP,
    kind="DWDirectiveRule",
    plural="dwdirectiverules",
    singular="dwdirectiverule",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=DirectiveRuleStrategy(),
)
