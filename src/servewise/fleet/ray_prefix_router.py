"""Ray's prefix-tree router (``ray.serve.llm``'s PrefixCacheAffinityRouter), for comparison only
(``--router prefix-affinity``). Imported from Ray's internal module because the public one
pulls in ray.llm's serving dependencies (pyarrow, ...) that ServeWise does not need.
"""

from __future__ import annotations

from typing import Any

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)

from servewise.fleet.ray_router import _FeedsFleetRouter
from servewise.fleet.routing import RouteReason


class PrefixAffinityRouter(_FeedsFleetRouter, PrefixCacheAffinityRouter):  # type: ignore[misc]  # Ray annotates a flat list
    """Ray's prefix-tree router (``ray.serve.llm``): a remote tree actor call per request."""

    def initialize_state(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize_state(**kwargs)
        self._attach(RouteReason.PREFIX)
