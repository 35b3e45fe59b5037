"""The capacity planner: the engine's own scheduler on measured step costs, on a simulated clock.

- ``profiler`` measures step costs on this machine (``servewise profile``) and ``fit`` fits
  ``step_cost.StepCostModel``; ``profile.Profile`` is profile.json.
- ``simulator.FleetSimulator`` drives the engine's ``Scheduler``, ``KVCacheManager``, queue
  policy and the slo layer's ``AdmissionController`` with that model instead of a model
  runner; ``routing`` is the fleet's rule for more than one replica.
- ``workload`` rebuilds the bench's requests, ``planner`` simulates grids of configurations
  and load points, ``decisions`` holds capacity, replicas, cost and the Pareto frontier,
  ``compare`` sets predictions against bench measurements.

Python API::

    from servewise.plan import FleetSimulator, Profile, StepCostModel

The CLI (``servewise profile``, ``servewise plan``, ``servewise plan validate``) is
``servewise.plan_cli``. This package never talks HTTP, imports the server, or Ray.
"""

from servewise.plan.profile import Profile, ProfileError
from servewise.plan.simulator import FleetSimulator, SimResult
from servewise.plan.step_cost import StepCostModel, StepShape, shape_of

__all__ = ["FleetSimulator", "Profile", "ProfileError", "SimResult", "StepCostModel", "StepShape", "shape_of"]
