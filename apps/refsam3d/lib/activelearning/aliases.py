"""``--conf random_strategy NAME``: which strategy answers ``POST /activelearning/random``.

The bundled OHIF always asks for ``random`` whatever its drop-down shows; this lets the server decide.
MONAI Label's own random choice stays available as ``random_pick``."""

from __future__ import annotations

from typing import Dict, Optional

from monailabel.interfaces.tasks.strategy import Strategy


class AliasedStrategy(Strategy):
    """Serves the name ``random`` with another strategy, and says so in ``/info``."""

    def __init__(self, name: str, target: Strategy):
        super().__init__(f"'random' is served by the '{name}' strategy (--conf random_strategy {name}): "
                         f"{target.description}")
        self.target_name = name
        self.target = target

    def __call__(self, request, datastore):
        return self.target(request, datastore)

    def info(self):
        return {**super().info(), "serves": self.target_name}


def alias_random(strategies: Dict[str, Strategy], name: Optional[str]) -> Dict[str, Strategy]:
    """``strategies`` with ``random`` served by ``strategies[name]`` (unchanged for no name or ``random``)."""
    name = (name or "").strip()
    if not name or name == "random":
        return strategies
    if name not in strategies or name == "random_pick":
        raise ValueError(f"--conf random_strategy must be one of {', '.join(sorted(strategies))}, got {name!r}")
    out = dict(strategies)
    out["random_pick"] = strategies["random"]
    out["random"] = AliasedStrategy(name, strategies[name])
    return out
