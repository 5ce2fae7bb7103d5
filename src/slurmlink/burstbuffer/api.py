"""The ``storage`` component: ``POST /storage/v1/namespaces/{ns}/servers/{name}/placement``.

What the workload manager calls to place a directive's storage (:mod:`burstbuffer.placing`), the
way a Kubernetes scheduler posts a pod's binding: body ``{"computes": N}`` (the job's node count),
answer the filled ``Servers``. 409 with what the pool has when the capacity is not free now.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from slurmlink import jsonutil
from slurmlink.api.component import ApiRoute, Component
from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.identity import Identity
from slurmlink.burstbuffer.names import PLACEMENT_PATH, PREFIX
from slurmlink.burstbuffer.placing import place_servers
from slurmlink.resources import errors
from slurmlink.resources.dws.servers import SERVERS

_ROLES = frozenset({"admin", "workload-manager"})


def storage_component(service: ResourceService) -> Component:
    async def placement(request: Request, identity: Identity) -> Any:
        try:
            body = jsonutil.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise errors.bad_request(f"the body must be JSON: {exc}") from exc
        computes = body.get("computes", 1) if isinstance(body, dict) else None
        if not isinstance(computes, int) or isinstance(computes, bool) or computes < 1:
            raise errors.bad_request('"computes" must be a positive integer (the job\'s node count)')
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        stored = await service.run(place_servers, service, namespace, name, computes, identity)
        return service.to_version(SERVERS, stored, SERVERS.storage_version)

    return Component(
        name="storage",
        prefix=PREFIX,
        routes=[ApiRoute(PLACEMENT_PATH, placement, methods=("POST",), roles=_ROLES)],
        openapi={
            "info": {"title": "slurmlink storage placement", "version": "v1"},
            "paths": {
                PREFIX + PLACEMENT_PATH: {
                    "post": {
                        "operationId": "placeServers",
                        "summary": "Place a directive's storage and take its capacity (workload manager)",
                        "requestBody": {
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"computes": {"type": "integer", "minimum": 1}},
                                    }
                                }
                            }
                        },
                        "responses": {
                            "200": {"description": "The Servers, filled"},
                            "409": {"description": "The capacity is not free now"},
                            "404": {"description": "No such Servers or DirectiveBreakdown"},
                        },
                    }
                }
            },
        },
    )
