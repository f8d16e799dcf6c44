"""Shared helper for the memory tests: file-backed resident memory of this process (Linux ``/proc``)."""

from __future__ import annotations


def rss_file_mib() -> float:
    """``RssFile`` of this process in MiB: pages of mapped files currently resident."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    raise KeyError("RssFile")
