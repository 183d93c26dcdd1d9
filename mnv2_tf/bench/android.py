"""Latency on an Android phone: TFLite's `benchmark_model` run over adb.

The user supplies the `benchmark_model` binary (TFLite's prebuilt android_aarch64 or
android_arm build). For each model: push it to /data/local/tmp/mnv2_tf/, run the binary
(under `taskset` with a CPU mask), parse its output (`parse.py`), and remove the model.
The binary is pushed once and skipped when the device already holds the same bytes.

Every argument that reaches `adb shell` is quoted with `shlex.quote` and the command is
passed as one string, so a file name with spaces, quotes or `;` stays a file name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import shlex
import shutil
import subprocess

from mnv2_tf.bench import parse
from mnv2_tf.bench.desktop import Timing, check_model_file
from mnv2_tf.errors import UserError

REMOTE_DIR = "/data/local/tmp/mnv2_tf"
REMOTE_BINARY = f"{REMOTE_DIR}/benchmark_model"
# ELF e_machine -> the Android ABIs that run it.
ELF_MACHINES = {
    183: ("arm64-v8a", "aarch64"),
    40: ("armeabi-v7a", "armeabi", "arm64-v8a"),
    62: ("x86_64",),
    3: ("x86", "x86_64"),
}
ELF_NAMES = {183: "arm64 (aarch64)", 40: "32-bit ARM", 62: "x86_64", 3: "x86"}


@dataclasses.dataclass
class Device:
    serial: str
    state: str  # "device", "unauthorized", "offline", ...
    details: dict[str, str]


def parse_devices(output: str) -> list[Device]:
    """`adb devices -l` -> devices (the daemon's start-up chatter is skipped)."""
    devices = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*", "adb server", "daemon")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        details = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        devices.append(Device(parts[0], parts[1], details))
    return devices


class Adb:
    """The adb client, bound to one device once `select` has run."""

    def __init__(self, executable: str | None = None, timeout: float = 600):
        self.executable = executable or shutil.which("adb")
        if not self.executable:
            raise UserError(
                "adb not found on PATH; install it (apt-get install adb, or Android's "
                "platform-tools) and connect a phone with USB debugging on"
            )
        self.serial: str | None = None
        self.timeout = timeout

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [self.executable, *(["-s", self.serial] if self.serial else []), *args]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise UserError(f"adb {args[0]} timed out after {self.timeout:.0f} s") from e
        if check and result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise UserError(
                f"adb {args[0]} failed: {message[-1] if message else result.returncode}"
            )
        return result

    def devices(self) -> list[Device]:
        return parse_devices(self._run("devices", "-l").stdout)

    def select(self, serial: str | None = None) -> Device:
        """Picks the device: `serial`, or the only one attached."""
        devices = self.devices()
        if serial:
            matches = [d for d in devices if d.serial == serial]
            if not matches:
                listed = ", ".join(f"{d.serial} ({d.state})" for d in devices) or "none"
                raise UserError(f"device {serial} not attached (attached: {listed})")
            device = matches[0]
        elif not devices:
            raise UserError(
                "no Android device attached (adb devices -l lists none); connect a phone "
                "with USB debugging on, or pass --target=desktop"
            )
        elif len(devices) > 1:
            listed = ", ".join(f"{d.serial} ({d.details.get('model', d.state)})" for d in devices)
            raise UserError(f"several devices attached ({listed}); choose one with --serial")
        else:
            device = devices[0]
        if device.state == "unauthorized":
            raise UserError(
                f"device {device.serial} is unauthorized; unlock it and accept the "
                "'Allow USB debugging' prompt, then retry"
            )
        if device.state != "device":
            raise UserError(
                f"device {device.serial} is {device.state}; reconnect it (or run "
                "adb kill-server) and retry"
            )
        self.serial = device.serial
        return device

    def shell(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs one command on the device; every argument is quoted for the device shell."""
        return self._run("shell", " ".join(shlex.quote(a) for a in args), check=check)

    def shell_script(self, script: str) -> subprocess.CompletedProcess:
        """A fixed script of our own (no user input in it)."""
        return self._run("shell", script, check=False)

    def push(self, local: str, remote: str) -> None:
        result = self._run("push", local, remote, check=False)
        if result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise UserError(
                f"adb push {os.path.basename(local)} failed: "
                f"{message[-1] if message else result.returncode}; is the device's storage full?"
            )

    def getprop(self, name: str) -> str:
        return self.shell("getprop", name, check=False).stdout.strip()


def device_facts(adb: Adb) -> dict:
    """Model, Android version, SoC/ABI and, where readable, CPU governors and frequencies."""
    facts = {
        "model": adb.getprop("ro.product.model"),
        "manufacturer": adb.getprop("ro.product.manufacturer"),
        "android_version": adb.getprop("ro.build.version.release"),
        "sdk": adb.getprop("ro.build.version.sdk"),
        "abi": adb.getprop("ro.product.cpu.abi"),
        "soc": adb.getprop("ro.soc.model")
        or adb.getprop("ro.board.platform")
        or adb.getprop("ro.hardware"),
    }
    script = (
        "for c in /sys/devices/system/cpu/cpu[0-9]*; do "
        'echo "$(basename $c) $(cat $c/cpufreq/scaling_governor 2>/dev/null) '
        "$(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null) "
        '$(cat $c/cpufreq/scaling_cur_freq 2>/dev/null)"; done'
    )
    cpus = []
    for line in adb.shell_script(script).stdout.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        entry = {"cpu": parts[0]}
        if len(parts) >= 2:
            entry["governor"] = parts[1]
        if len(parts) >= 3 and parts[2].isdigit():
            entry["max_khz"] = int(parts[2])
        if len(parts) >= 4 and parts[3].isdigit():
            entry["cur_khz"] = int(parts[3])
        cpus.append(entry)
    facts["cpus"] = cpus
    return facts


def elf_machine(path: str) -> int | None:
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    order = "little" if header[5] == 1 else "big"
    return int.from_bytes(header[18:20], order)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def install_binary(adb: Adb, binary: str, abi: str) -> bool:
    """Pushes `binary` unless the device holds the same bytes; True if it pushed."""
    if not os.path.isfile(binary):
        raise UserError(
            f"benchmark binary {binary} not found; download TFLite's android_aarch64 "
            "benchmark_model and pass its path with --benchmark_binary"
        )
    machine = elf_machine(binary)
    if machine is None:
        raise UserError(f"{binary} is not an executable (no ELF header); pass benchmark_model")
    if abi and abi not in ELF_MACHINES.get(machine, ()):
        raise UserError(
            f"{binary} is built for {ELF_NAMES.get(machine, f'machine {machine}')} but the "
            f"device's ABI is {abi}; use the matching benchmark_model build"
        )
    adb.shell("mkdir", "-p", REMOTE_DIR)
    local_hash = _sha256(binary)
    remote = adb.shell("sha256sum", REMOTE_BINARY, check=False).stdout.split()
    if remote and remote[0] == local_hash:
        return False
    adb.push(binary, REMOTE_BINARY)
    adb.shell("chmod", "755", REMOTE_BINARY)
    return True


@dataclasses.dataclass
class AndroidOptions:
    benchmark_binary: str
    serial: str | None = None
    cpu_mask: str | None = None  # hex, e.g. "f0" for the big cores
    use_gpu: bool = False
    use_nnapi: bool = False
    use_xnnpack: bool | None = None  # None: the binary's default


def benchmark_command(
    remote_model: str, threads: int, warmup_runs: int, num_runs: int, options: AndroidOptions
) -> list[str]:
    command = []
    if options.cpu_mask:
        mask = options.cpu_mask.lower().removeprefix("0x")
        if not mask or any(c not in "0123456789abcdef" for c in mask):
            raise UserError(f"--cpu_mask must be hexadecimal (e.g. f0), got {options.cpu_mask!r}")
        command += ["taskset", mask]
    command += [
        REMOTE_BINARY,
        f"--graph={remote_model}",
        f"--num_threads={threads}",
        f"--warmup_runs={warmup_runs}",
        f"--num_runs={num_runs}",
    ]
    if options.use_gpu:
        command.append("--use_gpu=true")
    if options.use_nnapi:
        command.append("--use_nnapi=true")
    if options.use_xnnpack is not None:
        command.append(f"--use_xnnpack={str(options.use_xnnpack).lower()}")
    return command


class Session:
    """One device, its facts, the binary installed: benchmark models on it."""

    def __init__(self, options: AndroidOptions, adb: Adb | None = None):
        self.options = options
        self.adb = adb or Adb()
        self.device = self.adb.select(options.serial)
        self.facts = {"serial": self.device.serial, **device_facts(self.adb)}
        self.pushed_binary = install_binary(self.adb, options.benchmark_binary, self.facts["abi"])

    def measure(self, path: str, threads: int, warmup_runs: int, num_runs: int) -> Timing:
        check_model_file(path)
        if threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        remote = posixpath.join(REMOTE_DIR, os.path.basename(path))
        self.adb.push(path, remote)
        try:
            command = benchmark_command(remote, threads, warmup_runs, num_runs, self.options)
            result = self.adb.shell(*command, check=False)
        finally:
            self.adb.shell("rm", "-f", remote, check=False)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise UserError(
                f"benchmark_model failed on {os.path.basename(path)} "
                f"(exit status {result.returncode}){parse.tail_of(output)}"
            )
        figures = parse.parse(output)
        mean = figures["mean_us"]
        return Timing(
            model=path,
            threads=threads,
            xnnpack=bool(self.options.use_xnnpack),
            size_bytes=os.path.getsize(path),
            init_us=figures.get("init_us", float("nan")),
            first_us=figures.get("first_us", float("nan")),
            warmup_avg_us=figures.get("warmup_avg_us", float("nan")),
            count=figures.get("count", num_runs),
            min_us=figures.get("min_us", float("nan")),
            max_us=figures.get("max_us", float("nan")),
            mean_us=mean,
            # Old binaries print no percentiles: the median is then unknown, not the mean.
            median_us=figures.get("median_us", float("nan")),
            p5_us=figures.get("p5_us", float("nan")),
            p90_us=float("nan"),
            p95_us=figures.get("p95_us", float("nan")),
            std_us=figures.get("std_us", float("nan")),
            curr_us=figures.get("curr_us", float("nan")),
            peak_rss_mb=figures.get(
                "peak_memory_mb", figures.get("memory_overall_mb", float("nan"))
            ),
            rss_delta_mb=figures.get("memory_overall_mb", float("nan")),
            target="android",
        )
