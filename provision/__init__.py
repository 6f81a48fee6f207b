"""Download the models a TOML file lists into the folders SD.Next reads.

from provision import Provisioner
report = Provisioner(workspace="/workspace").run("models.toml")
print(report.summary())
"""

from .config import ConfigError
from .core import Provisioner
from .report import ItemResult, Report
from .version import __version__
from .workspacelock import WorkspaceBusy

__all__ = ["ConfigError", "ItemResult", "Provisioner", "Report", "WorkspaceBusy", "__version__"]
