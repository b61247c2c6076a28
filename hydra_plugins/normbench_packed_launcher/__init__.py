"""normbench's Hydra launcher `hydra/launcher=packed`: the jobs of a sweep that share an
architecture train together, as packs (normbench/launcher.py). Hydra instantiates
launchers only from classes of the `hydra_plugins` namespace package: this is that class."""

from normbench import launcher


class PackedLauncher(launcher.PackedLauncher):
    """hydra/launcher=packed: normbench.launcher.PackedLauncher, where Hydra looks."""
