"""The ESPHome toolchain: esphome/esptool as process groups, progress, artifacts.

meshd never imports esphome; it runs the CLI (see docs/TOOLCHAIN.md). The public
surface is re-exported here; the modules each do one thing:

* ``toolchain``: the configurable commands and their environment;
* ``commands``: run one esphome command (plus the ``config``/``bundle`` helpers);
* ``runners``: a job Runner per job type, and ``make_runners``;
* ``progress``: progress from OTA, esptool and PlatformIO output;
* ``failure``: the lines that explain a failed run;
* ``storage``: ESPHome's StorageJSON and the files needed to flash a build;
* ``chip``: verify-chip with esptool before a serial upload.
"""

from meshd.toolchain.chip import ChipError, ChipMismatch, detect_chip, verify_chip
from meshd.toolchain.commands import (
    EsphomeFailed,
    create_bundle,
    invoke_esphome,
    list_bundle_files,
    validate_config,
)
from meshd.toolchain.runners import make_runners
from meshd.toolchain.storage import (
    ArtifactError,
    FlashFile,
    FlashMethod,
    FlashPlan,
    StorageRecord,
    flash_plan,
    is_serial_device,
    load_storage,
    storage_path,
)
from meshd.toolchain.tools import Toolchain, ToolMissing

__all__ = [
    "ArtifactError",
    "ChipError",
    "ChipMismatch",
    "EsphomeFailed",
    "FlashFile",
    "FlashMethod",
    "FlashPlan",
    "StorageRecord",
    "ToolMissing",
    "Toolchain",
    "create_bundle",
    "detect_chip",
    "flash_plan",
    "invoke_esphome",
    "is_serial_device",
    "list_bundle_files",
    "load_storage",
    "make_runners",
    "storage_path",
    "validate_config",
    "verify_chip",
]
