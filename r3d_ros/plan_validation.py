"""Safety check for plan steps before anything is published for a robot to execute.

A plan step passes only if
* its action is in the fixed vocabulary (:data:`r3d_ros.output_format.ACTIONS`);
* its target is a known object: one grounded in the same answer, or one from an object list the caller
  trusts (for example a labelled map); with neither available, targets cannot be checked and the plan is
  rejected rather than waved through;
* its position is finite, inside the map's bounding box grown by ``margin`` metres, and, for actions on
  an object (everything but ``navigate_to``), within ``max_target_distance`` of that object's box;
* a manipulation follows a step that brought the robot to it (``pick``/``place``/``open``/``close``/
  ``inspect`` on a target the robot has not navigated to are accepted only if ``require_navigation`` is off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math

import numpy as np

from r3d_ros.output_format import ACTIONS, Box, PlanStep


@dataclass
class PlanCheck:
    ok: bool
    errors: list[str] = field(default_factory=list)


def _distance_to_box(p: np.ndarray, box: Box) -> float:
    lo, hi = (np.asarray(c) for c in box.corners())
    return float(np.linalg.norm(np.maximum(0.0, np.maximum(lo - p, p - hi))))


def validate_plan(steps: list[PlanStep], known_objects: dict[str, Box], map_bounds: tuple | None,
                  margin: float = 0.5, max_target_distance: float = 1.5,
                  require_navigation: bool = True, max_steps: int = 32) -> PlanCheck:
    """Check ``steps`` against the vocabulary, known objects and map bounds (see module docstring)."""
    errors: list[str] = []
    if not steps:
        return PlanCheck(False, ['plan is empty'])
    if len(steps) > max_steps:
        return PlanCheck(False, [f'plan has {len(steps)} steps (limit {max_steps})'])
    if not known_objects:
        return PlanCheck(False, ['no known objects to check plan targets against'])
    lo = hi = None
    if map_bounds is not None:
        lo = np.asarray(map_bounds[0], float) - margin
        hi = np.asarray(map_bounds[1], float) + margin
    visited: set[str] = set()
    for i, step in enumerate(steps, 1):
        where = f'step {i} ({step.action} {step.target})'
        if step.action not in ACTIONS:
            errors.append(f'{where}: action {step.action!r} is not one of {list(ACTIONS)}')
            continue
        p = np.asarray(step.position, float)
        if p.shape != (3,) or not all(math.isfinite(v) for v in p):
            errors.append(f'{where}: position {step.position} is not a finite 3D point')
            continue
        if lo is None:
            errors.append(f'{where}: no map bounds to check the position against')
        elif (p < lo).any() or (p > hi).any():
            errors.append(f'{where}: position {tuple(round(v, 2) for v in p)} is outside the map bounds')
        box = known_objects.get(step.target)
        if box is None:
            errors.append(f'{where}: target {step.target!r} is not a known object')
            continue
        if step.action == 'navigate_to':
            visited.add(step.target)
            continue
        if _distance_to_box(p, box) > max_target_distance:
            errors.append(f'{where}: position is {_distance_to_box(p, box):.2f} m from {step.target} '
                          f'(limit {max_target_distance} m)')
        if require_navigation and step.target not in visited and not reachable(box, visited, known_objects):
            errors.append(f'{where}: robot has not navigated to {step.target} first')
    return PlanCheck(not errors, errors)


def reachable(box: Box, visited: set[str], known: dict[str, Box], radius: float = 1.0) -> bool:
    """An object on/next to one the robot navigated to is reachable (a cup on the table it went to)."""
    c = np.asarray(box.center)
    return any(_distance_to_box(c, known[v]) <= radius for v in visited if v in known)
