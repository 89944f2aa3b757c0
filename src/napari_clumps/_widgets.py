"""napari widgets (glue and layout only; the work happens in the core library)."""

from magicgui import magic_factory
from napari.types import LayerDataTuple


@magic_factory(
    call_button="Simulate",
    seed={"min": 0, "max": 2**31 - 1, "tooltip": "data set seed (as in `napari-clumps simulate --seed`)"},
    galaxy={"min": 0, "max": 10**6, "tooltip": "galaxy number within the seed"},
    show_truth={"label": "truth boxes"},
)
def simulate_widget(seed: int = 2024, galaxy: int = 0, show_truth: bool = True) -> list[LayerDataTuple]:
    """Add a simulated clumpy galaxy (colour composite, raw bands, truth boxes) to the viewer."""
    from ._sample_data import simulated_galaxy

    return simulated_galaxy(seed, galaxy, truth=show_truth)
