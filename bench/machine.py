"""What the figures were measured on: the machine, its load, the checkout and the module the CLI imports, and
how child processes are timed; printed at the top of every benchmark's output, and under its pictures."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from paths import REPO
from harness import require
from hosts import BINARY
from measure import GNU_TIME

def first_line(command: list[str]) -> str:
    """First line a command prints, or '?' when it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return (result.stdout or result.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def git_state() -> str:
    """Commit of the checkout, and which measured files the working tree changes on top of it."""
    head = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "docker_register.py", "bench"],
                             capture_output=True, text=True).stdout.split("\n")
    names = sorted({line[3:].split("/")[0] + ("/" if "/" in line[3:] else "") for line in changed if line.strip()})
    return head + (f" + working tree ({', '.join(names)} changed)" if names else "")


def load() -> str:
    """The load averages, which tell whether something else was using the machine."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stamp() -> str:
    """The machine's cores, its load now and the date, for a picture's caption."""
    return f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end, {time.strftime('%Y-%m-%d')}"


def installed_module() -> str:
    """Path and content hash of the docker_register the CLI imports."""
    import hashlib
    import importlib.util

    origin = Path(importlib.util.find_spec("docker_register").origin)
    return f"{origin} (sha256 {hashlib.sha256(origin.read_bytes()).hexdigest()[:12]})"


def compile_module() -> str:
    """Write the module's bytecode, as installing a package does: with PYTHONDONTWRITEBYTECODE set (or a
    read-only checkout), every child run would otherwise compile the module from source (about 50 ms)."""
    import importlib.util
    import py_compile

    return py_compile.compile(importlib.util.find_spec("docker_register").origin, doraise=True)


def print_machine(title: str, children: bool = True) -> None:
    """Print what the figures were measured on (and, for child processes, how they are timed)."""
    print(f"# {title}")
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(f"machine : {cpu_model()}, {os.cpu_count()} cores, {memory:.1f} GiB, Linux {platform.release()}")
    print(f"python  : {platform.python_version()} ({sys.executable})")
    print(f"etcd    : {first_line([require('etcd'), '--version'])}")
    if children:
        print(f"dockerd : {first_line([require('dockerd'), '--version'])}")
    print(f"module  : checkout at {git_state()}; {'CLI ' + BINARY + ' ' if children else ''}imports "
          f"{installed_module()}")
    if children:
        print(f"bytecode: {compile_module()} (written before the runs, as an installed package has it)")
        print("timing  : wall = perf_counter around each child; CPU = user+sys from wait4; peak RSS = "
              + ("GNU time %M (its fork overhead included, < 1 ms)" if GNU_TIME else
                 "wait4 ru_maxrss (GNU time missing: includes this process's RSS at fork; install package 'time')"))
    print(f"load    : {load()} (1/5/15 min) at start, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print()
