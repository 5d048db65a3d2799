"""ESPHome's own records of a build, and the files needed to flash it.

After a compile ESPHome writes a StorageJSON sidecar (``esphome/storage_json.py``) to
``<data_dir>/storage/<config file name>.json``, where ``<data_dir>`` is
``$ESPHOME_DATA_DIR``, ``/data`` in the Home Assistant add-on, or
``<config dir>/.esphome``. It names the build path, the firmware image, the target
platform (``esp_platform``: ``ESP32S3``, ``ESP8266``, ``HOST``...) and the esphome
version. Paths of artifacts come from there, never from guesses about layouts.

What ``esphome upload`` reads, besides the image itself (``esphome/__main__.py``):

* the sidecar and ``<data_dir>/storage/<file>.validated.yaml`` (``compiled_config.py``),
  the validated-config cache that lets upload skip validation when it is newer than
  the YAML;
* for a serial upload of a PlatformIO build, ``<data_dir>/idedata/<name>.json`` and
  ``<build>/platformio.ini`` (``platformio/toolchain.py``): the idedata names the
  bootloader and partition images and is trusted only while newer than the ini,
  otherwise esphome re-runs PlatformIO to regenerate it.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ArtifactError(Exception):
    """ESPHome's build record is missing, unreadable, or names files that do not exist."""


class FlashMethod(enum.StrEnum):
    OTA = "ota"
    SERIAL = "serial"


# Where esptool writes the app on each family when flashing over serial
# (esphome/__main__.py: upload_using_esptool).
APP_OFFSET_ESP32 = 0x10000
APP_OFFSET_ESP8266 = 0x0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def data_dir(config: Path, env: Mapping[str, str] | None = None) -> Path:
    """ESPHome's data directory for ``config`` (a YAML file or a config directory)."""
    environ = os.environ if env is None else env
    if _truthy(environ.get("ESPHOME_IS_HA_ADDON")):
        return Path("/data")
    if environ.get("ESPHOME_DATA_DIR"):
        return Path(environ["ESPHOME_DATA_DIR"])
    config_dir = config if config.is_dir() else config.absolute().parent
    return config_dir / ".esphome"


def storage_path(config: Path, env: Mapping[str, str] | None = None) -> Path:
    """``<data_dir>/storage/<config file name>.json``."""
    return data_dir(config, env) / "storage" / f"{config.name}.json"


def validated_config_path(config: Path, env: Mapping[str, str] | None = None) -> Path:
    """The validated-config cache ``esphome upload`` prefers over re-validating."""
    return data_dir(config, env) / "storage" / f"{config.name}.validated.yaml"


@dataclass(frozen=True)
class StorageRecord:
    """The fields of ESPHome's StorageJSON that meshd relies on."""

    path: Path
    name: str
    esphome_version: str | None
    target_platform: str
    """``esp_platform``: the chip variant (``ESP32S3``) or platform (``ESP8266``, ``HOST``)."""
    core_platform: str | None
    """The platform family (``esp32``, ``host``...); older sidecars lack it."""
    build_path: Path | None
    firmware_bin_path: Path | None
    framework: str | None = None
    toolchain: str | None = None
    address: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def family(self) -> str:
        """The platform family, derived the way ``StorageJSON.apply_to_core`` does."""
        if self.core_platform:
            return self.core_platform.lower()
        return self.target_platform.lower()

    @classmethod
    def from_json(cls, path: Path, data: Mapping[str, Any]) -> StorageRecord:
        def opt_path(key: str) -> Path | None:
            value = data.get(key)
            # StorageJSON.as_dict() writes str(None) for a missing path.
            return Path(value) if value and value != "None" else None

        name = data.get("name")
        platform = data.get("esp_platform")
        if not isinstance(name, str) or not isinstance(platform, str):
            raise ArtifactError(f"{path}: not an ESPHome build record (no name/esp_platform)")
        return cls(
            path=path,
            name=name,
            esphome_version=data.get("esphome_version", data.get("esphomeyaml_version")),
            target_platform=platform,
            core_platform=data.get("core_platform"),
            build_path=opt_path("build_path"),
            firmware_bin_path=opt_path("firmware_bin_path"),
            framework=data.get("framework"),
            toolchain=data.get("toolchain"),
            address=data.get("address"),
            raw=dict(data),
        )


def load_storage(config: Path, env: Mapping[str, str] | None = None) -> StorageRecord:
    """Read the StorageJSON of ``config``; raises ``ArtifactError`` if there is none."""
    path = storage_path(config, env)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(
            f"no build record for {config.name} at {path}; compile it first"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read build record {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not an ESPHome build record")
    return StorageRecord.from_json(path, data)


@dataclass(frozen=True)
class FlashFile:
    """One image to flash, with its flash offset for serial writes."""

    role: str
    """``app``, ``bootloader``, ``partitions``, ``boot_app0``, ``factory`` or ``extra``."""
    path: Path
    offset: int | None = None
    required: bool = True


@dataclass(frozen=True)
class FlashPlan:
    """What a flash of one build needs: images, plus the files ``esphome upload`` reads."""

    method: FlashMethod
    images: tuple[FlashFile, ...]
    upload_support: tuple[FlashFile, ...]

    @property
    def files(self) -> tuple[FlashFile, ...]:
        return self.images + self.upload_support

    def missing(self) -> list[Path]:
        """Required files that do not exist on disk."""
        return [f.path for f in self.files if f.required and not f.path.is_file()]


def _role_for(path: Path) -> str:
    name = path.name
    if "bootloader" in name:
        return "bootloader"
    if "partition" in name:
        return "partitions"
    if name.startswith("boot_app0"):
        return "boot_app0"
    return "extra"


def _idedata_images(idedata: Path) -> tuple[Path | None, list[FlashFile]]:
    """``prog_path``-derived app image and the extra images PlatformIO declared."""
    try:
        raw = json.loads(idedata.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, []
    app = None
    if isinstance(raw.get("prog_path"), str):
        app = Path(raw["prog_path"]).with_suffix(".bin")
    extras = []
    for entry in raw.get("extra", {}).get("flash_images", []) or []:
        path = Path(entry["path"])
        extras.append(FlashFile(_role_for(path), path, int(str(entry["offset"]), 0)))
    return app, extras


def flash_plan(
    record: StorageRecord,
    method: FlashMethod,
    config: Path,
    env: Mapping[str, str] | None = None,
) -> FlashPlan:
    """The files needed to flash ``record``'s build by ``method``.

    OTA sends only the app image (``firmware_bin_path``: ``firmware.bin``,
    ``firmware.uf2`` on LibreTiny, the ``program`` on host). A serial flash needs the
    full layout: on ESP32 the bootloader, partition table (and ``boot_app0`` for
    Arduino) from PlatformIO's idedata plus the app at 0x10000, with the merged
    ``firmware.factory.bin`` as an optional single-image alternative; on ESP8266 the
    app alone at 0x0.
    """
    if record.firmware_bin_path is None or record.build_path is None:
        raise ArtifactError(f"{record.path}: build record has no firmware path; compile first")
    ddir = data_dir(config, env)
    support = [FlashFile("storage", record.path)]
    support.append(
        FlashFile("validated_config", validated_config_path(config, env), required=False)
    )
    # What the new firmware will report (meshd/fleet/buildinfo.py): without it an
    # offloader that flashes a receiver's build cannot verify the flash.
    support.append(FlashFile("build_info", record.build_path / "build_info.json", required=False))
    app = record.firmware_bin_path
    family = record.family

    if method is FlashMethod.OTA:
        return FlashPlan(method, (FlashFile("app", app),), tuple(support))

    if family == "host":
        raise ArtifactError("the host platform has no serial flash; upload it over OTA")

    images: list[FlashFile]
    if record.toolchain == "esp-idf":
        # Native ESP-IDF builds: esphome flashes the merged factory image at 0x0.
        factory = record.build_path / "build" / "firmware.factory.bin"
        images = [FlashFile("factory", factory, 0x0)]
    elif family == "esp32":
        idedata = ddir / "idedata" / f"{record.name}.json"
        support.append(FlashFile("idedata", idedata))
        support.append(FlashFile("platformio_ini", record.build_path / "platformio.ini"))
        idedata_app, extras = _idedata_images(idedata)
        images = [*extras, FlashFile("app", idedata_app or app, APP_OFFSET_ESP32)]
        images.append(
            FlashFile("factory", app.parent / "firmware.factory.bin", 0x0, required=False)
        )
    elif family == "esp8266":
        images = [FlashFile("app", app, APP_OFFSET_ESP8266)]
    else:
        # RP2040 and LibreTiny serial uploads go through PlatformIO's own uploader,
        # which reads the build directory as it left it.
        support.append(FlashFile("platformio_ini", record.build_path / "platformio.ini"))
        images = [FlashFile("app", app)]
    return FlashPlan(method, tuple(images), tuple(support))


def is_serial_device(device: str) -> bool:
    """Whether ``esphome upload --device`` treats ``device`` as a serial port.

    Mirrors ``esphome.upload_targets.get_port_type``: paths and ``COMn`` are serial,
    everything else (IP, hostname, ``OTA``, ``MQTT``) goes over the network.
    """
    return device.startswith(("/", "COM"))
