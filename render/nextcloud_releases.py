"""Is the pinned Nextcloud still supported upstream? A warning (never a failure) from a small table in the repo.

The table is ``render/nextcloud_releases.toml``: each major release's end-of-life date, its source and the date of
the data. Warnings are plain sentences for the tasks that load settings to print.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("nextcloud_releases.toml")
# How early to say that the pinned major is about to lose its security fixes (a major upgrade needs planning),
# and how old the table may get before it cannot be trusted to know the newest majors.
SOON_DAYS = 60
STALE_DAYS = 183


@dataclass(frozen=True)
class ReleaseTable:
    source: str
    as_of: date
    end_of_life: dict[int, date]


@cache
def load_table(path: Path = TABLE) -> ReleaseTable:
    """Read and check the table (a broken table is a bug in the repository: it raises)."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    eol = {int(major): day for major, day in doc["end_of_life"].items()}
    if not all(isinstance(day, date) for day in eol.values()) or not isinstance(doc["as_of"], date):
        raise ValueError(f"{path}: every date must be a TOML date such as 2027-06-30")
    return ReleaseTable(source=str(doc["source"]), as_of=doc["as_of"], end_of_life=eol)


def support_warnings(version: str, today: date, table: ReleaseTable | None = None) -> list[str]:
    """Warnings about ``nextcloud.version`` (``34.0.3``) on ``today``: past its end of life, close to it, unknown to
    the table, or the table itself out of date. Empty when the major is supported and the table is current."""
    table = table or load_table()
    major = int(version.split(".", 1)[0])
    where = f"render/nextcloud_releases.toml, data of {table.as_of.isoformat()}"
    supported = sorted(
        ((m, day) for m, day in table.end_of_life.items() if day >= today), key=lambda item: item[0], reverse=True
    )
    alternatives = ", ".join(f"{m} until {day.isoformat()}" for m, day in supported) or "none known: update the table"
    warnings = []
    if major in table.end_of_life:
        eol = table.end_of_life[major]
        if eol < today:
            warnings.append(
                f"nextcloud.version {version}: Nextcloud {major} reached its end of life on {eol.isoformat()} and gets "
                f"no security fixes; pin a supported release ({alternatives}) ({where})"
            )
        elif (eol - today).days <= SOON_DAYS:
            warnings.append(
                f"nextcloud.version {version}: Nextcloud {major} reaches its end of life on {eol.isoformat()}, in "
                f"{(eol - today).days} days; plan the upgrade ({alternatives}) ({where})"
            )
    elif major < min(table.end_of_life):
        warnings.append(
            f"nextcloud.version {version}: Nextcloud {major} is older than every release in the table, all past their "
            f"end of life; pin a supported release ({alternatives}) ({where})"
        )
    else:
        warnings.append(
            f"nextcloud.version {version}: Nextcloud {major} is not in the release table; add its end-of-life date "
            f"from {table.source} ({where})"
        )
    if (today - table.as_of).days > STALE_DAYS:
        warnings.append(
            f"the Nextcloud release table is {(today - table.as_of).days} days old ({where}); refresh it from "
            f"{table.source} so newer majors and their dates are known"
        )
    return warnings
