"""Hydra configs of iddpm_pl (a package, so they ship with a regular install)."""
