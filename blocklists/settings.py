"""The `blocklists` section of the configuration: the list sources and how they are refreshed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ListSource:
    name: str
    format: str  # domains | hosts | adblock | ut1
    url: str | None = None
    path: str | None = None  # resolved against the config file's folder
    domains: tuple[str, ...] = ()  # inline entries
    category: str | None = None  # required except for ut1
    match: str = "default"  # default | suffix
    usage: str | None = None  # black | white, for a single-category source


@dataclass(frozen=True, slots=True)
class BlocklistSettings:
    refresh: float = 86400.0  # seconds
    sources: tuple[ListSource, ...] = ()
    bundled: bool = True  # the starter lists shipped under blocklists/data/starter
    download_timeout: float = 120.0
    max_download_bytes: int = 512 * 1024 * 1024


LIST_FORMATS = ("domains", "hosts", "adblock", "ut1")
