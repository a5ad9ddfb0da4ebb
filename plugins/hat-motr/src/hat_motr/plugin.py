"""hat-motr's hook implementations (and nothing else)."""

from __future__ import annotations

from hat.hookspecs import hookimpl


@hookimpl
def hat_register(registry) -> None:
    registry.add_package("hat_motr")


@hookimpl
def hat_packers() -> dict[str, type]:
    from hat_motr.packer import Mot17Packer

    return {"mot17": Mot17Packer}


@hookimpl
def hat_synth() -> dict[str, object]:
    from hat_motr.synth import generate_mot17

    return {"mot17": generate_mot17}
