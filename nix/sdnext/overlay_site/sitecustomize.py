"""Imported by Python at start-up (sdnext-launch puts this folder on PYTHONPATH): adds the
extensions' packages, which `provision` installs on the workspace, to the *end* of sys.path, so
every package of the image comes first and an extension can only add, never replace."""

import os
import site

_overlay = os.environ.get("SDNEXT_EXTENSION_PACKAGES")
if _overlay and os.path.isdir(_overlay):
    site.addsitedir(_overlay)
